"""The signals that stop a run (Ctrl-C, kill, a closed terminal), and what an interruption says: where it stopped,
what is kept, and the command that continues. No torch here."""
import contextlib
import os
import shlex
import shutil
import signal
import sys

from report import PROG, Failure

# the signals that stop a run, and its exit status for each
EXIT_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):  # a closed terminal or a dropped ssh session
    EXIT_SIGNALS[signal.SIGHUP] = 129

STARTING = "starting"  # the phase before the results folder is touched: nothing is written yet
NOTHING_WRITTEN = "interrupted before training started; nothing was written; run the same command to start again"


class Interrupted(Exception):
    """A signal stopped the run in an epoch, or in a phase (STARTING, drawing, the final evaluation), or after
    training (neither)."""

    def __init__(self, signum, epoch=None, phase=None):
        super().__init__(signum, epoch, phase)
        self.signum, self.epoch, self.phase = signum, epoch, phase


def ignore_signals():
    """Ignore the stopping signals from now on (the process is ending and has said why)."""
    for s in EXIT_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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

    def stop_at_once(self):
        """From now on until caught() takes over, a signal ends the process at once with its one line."""
        for s in EXIT_SIGNALS:
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        self.received = signum
        if self.at_once:  # nothing is written yet: end here, never raising through the code that was running
            stop_at_once(signum)

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


def stop_at_once(signum):
    """End the process with the start-up interruption's one line and the signal's status, at once: an exception
    raised from a handler could surface inside any library's code (an import) as a traceback."""
    ignore_signals()
    if Failure.status is None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{PROG}: error: {NOTHING_WRITTEN}\n")
            sys.stderr.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    os._exit(Failure.status if Failure.status is not None else EXIT_SIGNALS[signum])


SIGNALS = Signals()  # signals are the process's: one catcher for it


def interrupted_message(e, epochs, saved, command):
    """What an interruption says: where it stopped, what is kept (saved, holding `epochs` epochs), and the
    command that continues."""
    if e.phase == STARTING:
        return NOTHING_WRITTEN
    if saved is None:
        return (f"interrupted in epoch {e.epoch}; no epoch had finished; nothing to resume: run the same command to "
                f"start again")
    if e.phase is not None:
        return f"interrupted {e.phase}; {saved} holds all {epochs} epochs; continue with: {command}"
    if e.epoch is None:
        return f"interrupted; all {epochs} epochs finished and {saved} holds them; continue with: {command}"
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
