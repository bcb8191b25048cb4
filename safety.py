"""A run's safety: the results folder (its output names, whole-or-nothing writes, the lock, an earlier run moved
aside), the signals that stop a run, the failures and their one-line messages. No torch here."""
import contextlib
import errno
import io
import os
import re
import shlex
import shutil
import signal
import sys

try:
    import fcntl
except ImportError:  # not on Windows: runs there go unlocked
    fcntl = None

PROG = "run_main.py"
# the signals that stop a run, and its exit status for each
EXIT_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):  # a closed terminal or a dropped ssh session
    EXIT_SIGNALS[signal.SIGHUP] = 129


# ---- failures

class RunError(Exception):
    """A run cannot go on: a one-line message for the user, and the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


STARTING = "starting"  # the phase before the results folder is touched: nothing is written yet


class Interrupted(Exception):
    """A signal stopped the run in an epoch, or in a phase (STARTING, drawing, the final evaluation), or after
    training (neither)."""

    def __init__(self, signum, epoch=None, phase=None):
        super().__init__(signum, epoch, phase)
        self.signum, self.epoch, self.phase = signum, epoch, phase


class NonFinite(Exception):
    """A figure (what) became infinite or NaN in a phase of the run (an epoch, the final evaluation)."""

    def __init__(self, what, phase):
        super().__init__(what, phase)
        self.what, self.phase = what, phase


class Failure:
    """The one failure line a process prints: its exit status once printed (a later signal adds nothing)."""
    status = None


def fail(message, status):
    """Stop with a one-line error and the exit status."""
    if Failure.status is None:
        Failure.status = status
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(Failure.status)


def out_of_memory(e):
    """Whether an exception is the allocator's: Python's MemoryError, or torch's RuntimeError for a CPU or GPU
    allocation that failed."""
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "DefaultCPUAllocator" in text))


def quiet_stdout():
    """Send what is left of standard output nowhere (its reader went away, or it cannot be written)."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def ignore_signals():
    """Ignore the stopping signals from now on (the process is ending and has said why)."""
    for s in EXIT_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def say(line):
    """Print a line of the run's report. Standard output that fails (a full disk) costs one line on stderr,
    once, and never the run: its figures are in metrics.csv. A reader that went away (| head) ends it."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise
    except OSError as e:
        quiet_stdout()  # what is still buffered goes nowhere
        sys.stdout = open(os.devnull, "w")
        print(f"{PROG}: warning: cannot write to standard output ({(e.strerror or str(e)).lower()}); "
              f"the run goes on, its figures are in metrics.csv", file=sys.stderr, flush=True)


def duration(seconds):
    """A duration for people: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ---- signals

class Signals:
    """SIGINT, SIGTERM and SIGHUP stop the run. While it starts (nothing written yet) a signal stops it at once,
    wherever it is (an import, loading the data); afterwards it only sets `received`, and the run stops at its
    next safe point, never in the middle of a write."""

    received = None
    at_once = True

    @contextlib.contextmanager
    def caught(self):
        """Catch the signals for the duration, then restore the handlers there were."""
        self.received, self.at_once, Failure.status = None, True, None
        previous = {s: signal.signal(s, self.handle) for s in EXIT_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def handle(self, signum, frame):
        self.received = signum
        if self.at_once:
            raise Interrupted(signum, phase=STARTING)

    def writing(self):
        """From now on the run writes: a signal waits for the next safe point."""
        self.at_once = False
        self.check(phase=STARTING)

    def stopping(self):
        """Whether a signal came."""
        return self.received is not None

    def check(self, epoch=None, phase=None):
        """Raise Interrupted if a signal came."""
        if self.received is not None:
            raise Interrupted(self.received, epoch, phase)


SIGNALS = Signals()  # signals are the process's: one catcher for it


def interrupted_message(e, epochs, saved, command):
    """What an interruption says: where it stopped, what is kept (saved, holding `epochs` epochs), and the
    command that continues."""
    if e.phase == STARTING:
        return "interrupted before training started; nothing was written"
    if e.phase is not None:
        return f"interrupted {e.phase}; {saved} holds all {epochs} epochs"
    if e.epoch is None:
        return f"interrupted; all {epochs} epochs finished and {saved} holds them"
    if saved is None:
        return f"interrupted in epoch {e.epoch}; no epoch had finished; nothing to resume"
    return (f"interrupted in epoch {e.epoch}; the checkpoint of the {epochs} finished epochs is {saved}; "
            f"continue with: {command}")


def python_command():
    """How to name this interpreter in a command to type: python, unless python on PATH is another one."""
    on_path = shutil.which("python")
    with contextlib.suppress(OSError):
        if on_path and os.path.samefile(on_path, sys.executable):
            return "python"
    return sys.executable or "python"


def resume_command(script, argv, checkpoint_path, python="python"):
    """The command line that continues this run from its checkpoint."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join([python, script, *kept, "--resume", checkpoint_path])


# ---- the results folder: the one owner of its files

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
LOSS_PNG = "loss.png"
EVALUATION_JSON = "evaluation.json"
INPUT_JPG = "input.jpg"
INPUT_NOISE_JPG = "input_noise.jpg"
PICTURE_KINDS = ("PRR", "PMLR", "PMLR_map", "PRS", "PARR", "PIR")
LOCK_NAME = ".run_main.lock"
# every name a run writes: the fixed ones and the epochs' pictures (a conditional PMLR's one per digit), and
# nothing else
OUTPUT_NAME = re.compile("|".join(map(re.escape, (CHECKPOINT, METRICS_CSV, LOSS_PNG, EVALUATION_JSON, INPUT_JPG,
                                                  INPUT_NOISE_JPG)))
                         + rf"|({'|'.join(PICTURE_KINDS)})_epoch_\d{{2,}}\.jpg|PMLR_epoch_\d{{2,}}_\d\.jpg")


def picture_name(kind, epoch, label=None):
    """The file of an epoch's picture of one kind (PRR, PMLR, PMLR_map, PRS, PARR or PIR); a conditional
    PMLR's manifold of one digit label is PMLR_epoch_NN_L.jpg."""
    return f"{kind}_epoch_{epoch:02d}" + ("" if label is None else f"_{label}") + ".jpg"


def is_output(name):
    """Whether name is one a run writes into the results folder."""
    return OUTPUT_NAME.fullmatch(name) is not None


def reason(e):
    """An OSError's reason, as a message's lower-case tail."""
    return (e.strerror or str(e)).lower()


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
        never sees half a file, and a failed write leaves no temporary file and raises RunError."""
        buffer = io.BytesIO()
        render(buffer)
        path = self.file(name)
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise RunError(f"cannot write {path}: {reason(e)}") from None

    def outputs(self):
        """The outputs an earlier run left here, sorted."""
        return sorted(name for name in os.listdir(self.path)
                      if is_output(name) and os.path.isfile(os.path.join(self.path, name)))

    def remove_stale_temporaries(self):
        """Remove the temporary files of a run that died mid-write (only of this code's names)."""
        for name in os.listdir(self.path):
            if name.endswith(".tmp") and is_output(name[:-4]):
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
