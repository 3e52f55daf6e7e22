"""How a script meets the command line: range-checked numbers, one-line errors, quiet stops.

Only the standard library, so that a script can import this before torch.
"""
import argparse
import atexit
import gc
import math
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Problem(Exception):
    """A person's mistake (a missing file, a damaged checkpoint, a device this machine lacks):
    ``run_script`` ends it in one line. Each module's errors of that kind derive from it."""


@contextmanager
def writing(path, flag: str) -> Iterator[None]:
    """Within the block, a failure to write ``path`` is a ``Problem`` that names the flag which
    chooses another place."""
    try:
        yield
    except OSError as e:
        raise Problem(f"cannot write {path} ({e.strerror or e}): pass another {flag} PATH"
                      ) from None


class UsageError(Exception):
    """A mistake in the flags that only shows after parsing (flags that contradict a saved run,
    a split that leaves nothing to train on); the script's ``main`` reports it the way argparse
    reports its own: the usage line, ``error: ...`` and status 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that a stop unwinds like any error.
    A BaseException, as KeyboardInterrupt is: code that turns a failed read into a message
    (``except Exception``) must not turn a stop into one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _exit_quietly(signum, frame):
    print(f"stopped by {signal.Signals(signum).name} while starting; nothing was saved",
          file=sys.stderr)
    os._exit(128 + signum)


def stop_quietly_while_starting() -> None:
    """Until ``main`` takes over, end a stop with one line instead of a traceback from deep
    inside ``import torch``, which takes seconds. Scripts call it only when run as scripts, so
    importing them changes nothing."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_quietly)


@contextmanager
def stops_raise_interrupted() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted``; the previous handlers come
    back after it."""
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopNote:
    """The last stop signal received, or None: for processes that must stop together."""
    signum: int | None = None


@contextmanager
def stops_noted() -> Iterator[StopNote]:
    """Within the block, SIGINT and SIGTERM are only noted: processes training together stop
    at the same step once they agree, instead of one leaving the others waiting for it."""
    note = StopNote()

    def take_note(signum, frame):
        note.signum = signum
    previous = {signum: signal.signal(signum, take_note) for signum in STOP_SIGNALS}
    try:
        yield note
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_script(main: Callable[[], None]) -> None:
    """Run a script's ``main``. A person's mistake (a ``Problem``) ends in one line,
    ``error: ...``, and status 1; Ctrl-C in one line and status 130; a reader that stops early
    (``python test.py | head``) ends it with status 1 and no traceback, as other command-line
    tools do."""
    signal.signal(signal.SIGINT, signal.default_int_handler)    # starting is over
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Python's last garbage collection at exit walks every object torch made: 0.5-1 s added
    # to each run and to each Ctrl-C. Nothing needs it (files are written and closed, process
    # groups ended, by then), so the objects are frozen out of its sight.
    atexit.register(gc.freeze)
    try:
        main()
        sys.stdout.flush()    # a closed pipe must show here, not at interpreter exit
    except Problem as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("stopped by SIGINT", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush goes there
        sys.exit(1)


def ranged(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: ``kind`` (int or float) within [low, high], ends open where asked."""
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):       # float("nan") passes every comparison below
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(filter(None, [lo, hi]))}, "
                                             f"got {text}")
        return value
    return check
