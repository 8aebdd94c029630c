"""One writer per OUT: a build, a publish, a queue fill or a VGG-Face pass holds OUT/.lock while it writes.

The lock is an advisory `flock` on the file, so the kernel drops it when the holder dies (kill -9 included) and a
stale lock never blocks a later run. The file names the holder, so a second run can say who has OUT.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class OutLocked(RuntimeError):
    """Another run holds OUT."""


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another run"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return f"pid {h.get('pid')} on {h.get('host')} ({h.get('command')}, since {started})"


@contextmanager
def out_lock(out: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold OUT's lock for `what` (e.g. "build"). Raises OutLocked naming the holder, or waits when `wait`.

    Re-entrant within one process: a flow that holds it can call code that asks for it again."""
    out = Path(out)
    key = str(out.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise OutLocked(
                    f"{out} is in use by {_holder(path)}; wait for it to finish, or pass --wait to queue behind it"
                ) from None
            print(f"waiting for {out}: in use by {_holder(path)}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": what, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


_held: dict[str, int] = {}


def holds_out_lock(what: str):
    """Decorate a function taking `out` (and optionally `wait_for_out`) so it runs holding OUT's lock."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with out_lock(bound.arguments["out"], what, bool(bound.arguments.get("wait_for_out", False))):
                return fn(*args, **kwargs)

        return locked

    return decorate
