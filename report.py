"""The run's report: its lines on standard output, and its failures, each one line on standard error with an exit
status. No torch here."""
import contextlib
import io
import os
import stat
import sys

PROG = "run_main.py"


class RunError(Exception):
    """A run cannot go on: a one-line message for the user, and the exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


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
        print(f"{PROG}: warning: cannot write to standard output ({reason(e)}); "
              f"the run goes on, its figures are in metrics.csv", file=sys.stderr, flush=True)


def duration(seconds):
    """A duration for people: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def reason(e):
    """An OSError's reason, as a message's lower-case tail."""
    return (e.strerror or str(e)).lower()


def what_is(path):
    """What a path is, in words: a file, a folder, a named pipe, a socket, a device, a symbolic link to nothing."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing" if os.path.islink(path) else "not there"
    except OSError as e:
        return f"unreadable ({reason(e)})"
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "not a regular file"
