"""The results folder, the one owner of its files: the output names, whole-or-nothing writes, the lock that keeps a
second run out, and an earlier run's files moved aside (nothing is ever deleted). No torch here."""
import contextlib
import errno
import io
import os
import re

from report import RunError, reason, say

try:
    import fcntl
except ImportError:  # not on Windows: runs there go unlocked
    fcntl = None

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss.png"
EVALUATION_JSON = "evaluation.json"
SETTINGS_JSON = "settings.json"
INPUT_JPG = "input.jpg"
INPUT_NOISE_JPG = "input_noise.jpg"
PICTURE_KINDS = ("PRR", "PMLR", "PMLR_map", "PRS", "PARR", "PIR")
LOCK_NAME = ".run_main.lock"
# the running record a resume continues in place (rewritten each epoch); every other output, once written, is kept
RECORD = (CHECKPOINT, METRICS_CSV, LOSS_PNG, SETTINGS_JSON)
# every name a run writes, and nothing else: the record, and the kept outputs (the fixed ones and the epochs'
# pictures, a conditional PMLR's one per digit), each of these also as NAME-N.ext, a later run's different version
VERSION = r"(-[0-9]+)?"
OUTPUT_NAME = re.compile(
    "|".join(map(re.escape, RECORD)) + rf"|evaluation{VERSION}\.json|(input|input_noise"
    + rf"|({'|'.join(PICTURE_KINDS)})_epoch_[0-9]{{2,}}|PMLR_epoch_[0-9]{{2,}}_[0-9]){VERSION}\.jpg", re.ASCII)


def picture_name(kind, epoch, label=None):
    """The file of an epoch's picture of one kind (PRR, PMLR, PMLR_map, PRS, PARR or PIR); a conditional
    PMLR's manifold of one digit label is PMLR_epoch_NN_L.jpg."""
    return f"{kind}_epoch_{epoch:02d}" + ("" if label is None else f"_{label}") + ".jpg"


def is_output(name):
    """Whether name is one a run writes into the results folder."""
    return OUTPUT_NAME.fullmatch(name) is not None


def is_temporary(name):
    """Whether name is the temporary file of an output (NAME.tmp, renamed over NAME once written whole)."""
    return name.endswith(".tmp") and is_output(name[:-4])


class WriteError(RunError):
    """An output could not be written (a full disk, a read-only folder)."""


class ResultsFolder:
    """--results_path, locked by this run: writes its named outputs, and moves an earlier run's aside.
    continues: whether this run continues the folder's own checkpoint (nothing was moved aside)."""

    def __init__(self, path, continues=False):
        self.path, self.continues = path, continues

    def file(self, name):
        """The path of one of the run's outputs."""
        assert is_output(name), name
        return os.path.join(self.path, name)

    def write(self, name, render):
        """render(file) into memory, then write the output through a temporary file and a rename: a reader
        never sees half a file, and a failed write leaves no temporary file and raises RunError. Only the record
        is ever replaced: another output whose name is taken keeps its file, and a different version is written
        as NAME-N.ext (N the next free number; the same bytes are not written twice)."""
        buffer = io.BytesIO()
        render(buffer)
        path = self.file(name)
        if name not in RECORD and os.path.lexists(path):
            name = self.version_name(name, buffer.getbuffer())
            if name is None:
                return
            path = self.file(name)
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise WriteError(f"cannot write {path}: {reason(e)}") from None

    def version_name(self, name, data):
        """The free NAME-N.ext for a different version of the kept output name, or None when name, or one of its
        versions, already holds these bytes."""
        stem, ext = os.path.splitext(name)
        n, candidate = 1, name
        while os.path.lexists(os.path.join(self.path, candidate)):
            with contextlib.suppress(OSError):
                with open(os.path.join(self.path, candidate), "rb") as f:
                    if f.read() == data:
                        return None
            n += 1
            candidate = f"{stem}-{n}{ext}"
        say(f"{name} is kept; this run's version is {candidate}")
        return candidate

    def outputs(self):
        """The outputs an earlier run left here, sorted."""
        return sorted(name for name in os.listdir(self.path) if is_output(name) and (
            os.path.isfile(os.path.join(self.path, name)) or os.path.islink(os.path.join(self.path, name))))

    def remove_stale_temporaries(self):
        """Remove the temporary files of a run that died mid-write (only of this code's names)."""
        for name in os.listdir(self.path):
            if is_temporary(name):
                os.remove(os.path.join(self.path, name))

    def move_earlier_run(self):
        """Move an earlier run's outputs into previous_run_N (N the next free number), all or none."""
        names = self.outputs()
        if not names:
            return
        n = 1
        while os.path.lexists(os.path.join(self.path, f"previous_run_{n}")):
            n += 1
        target = os.path.join(self.path, f"previous_run_{n}")
        os.makedirs(target)
        moved = []
        try:
            for name in names:
                os.replace(os.path.join(self.path, name), os.path.join(target, name))
                moved.append(name)
        except OSError:
            for name in moved:  # put back what had moved: the earlier run stays whole in one folder
                with contextlib.suppress(OSError):
                    os.replace(os.path.join(target, name), os.path.join(self.path, name))
            with contextlib.suppress(OSError):
                os.rmdir(target)
            raise
        say(f"moved the earlier run's {len(names)} files in {self.path} to {target}")


def continues_in_place(resume, path):
    """Whether resuming resume continues the run in folder path: only when it is that folder's own checkpoint
    (the same file, links resolved). Any other checkpoint, a copy or a backup beside it included, branches."""
    own = os.path.join(path, CHECKPOINT)
    with contextlib.suppress(OSError):
        return resume is not None and os.path.exists(own) and os.path.samefile(resume, own)
    return False


@contextlib.contextmanager
def results_folder(path, resume):
    """Create and lock --results_path for this run, remove stale temporary files, and move an earlier run's
    outputs aside unless this run continues that folder's own checkpoint; yields its ResultsFolder."""
    try:
        os.makedirs(path, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        lock = os.fdopen(os.open(os.path.join(path, LOCK_NAME), flags, 0o644), "a")
    except OSError as e:
        why = f"{LOCK_NAME} in it is a symbolic link" if e.errno == errno.ELOOP else reason(e)
        raise RunError(f"cannot use --results_path {path}: {why}") from None
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunError(f"another run is writing to {path}; wait for it to end or choose another "
                               f"--results_path") from None
        folder = ResultsFolder(path, continues_in_place(resume, path))
        try:
            folder.remove_stale_temporaries()
            if not folder.continues:
                folder.move_earlier_run()
        except OSError as e:
            raise RunError(f"cannot tidy --results_path {path}: {reason(e)}") from None
        yield folder
