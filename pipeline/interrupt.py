"""A graceful stop. The first Ctrl-C or SIGTERM asks the build to stop: no new clip starts, and clips in flight
abandon their work at the next frame (they record no status, so the next run redoes them). The second one
stops the process at once. Only the main thread installs the handlers; workers just read `stopping`."""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

stopping = threading.Event()


class Interrupted(Exception):
    """A clip abandoned because the run is stopping (not a failure of the clip: it gets no status)."""


class DiskFull(OSError):
    """No space left where OUT is: the run stops (the clip gets no status), and a re-run after freeing space
    finishes it."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(err: OSError) -> str:
    where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
    return f"no space left on the device{where}: free some space and run the same command again (it resumes)"


def check() -> None:
    if stopping.is_set():
        raise Interrupted("the run is stopping")


STOP_MESSAGE = "stopping: no new clips; in-flight clips are abandoned (Ctrl-C again to abort)"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handle(signum, frame) -> None:
    if stopping.is_set():
        raise KeyboardInterrupt
    stopping.set()
    print(STOP_MESSAGE, file=sys.stderr, flush=True)


_active = threading.Event()  # inside graceful_stop: the command asked for graceful stops


def take_signals() -> None:
    """Make SIGINT and SIGTERM ask for a graceful stop, when the command asked for it (`graceful_stop`) and from
    the main thread only. Called again inside the flow, because Prefect's flow engine installs a SIGTERM handler
    of its own when a run starts. Flow runs that Prefect's runner started (deployments) keep Prefect's handling."""
    if _active.is_set() and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handle)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Within this block, the first SIGINT or SIGTERM sets `stopping` (and says so once); the second raises
    KeyboardInterrupt. The handlers in place before are restored after. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _active.set()
    take_signals()
    try:
        yield
    finally:
        _active.clear()
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while it starts a child process: the child inherits the blocked mask, so a
    Ctrl-C at the terminal (sent to the whole process group) does not kill it under the run."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
