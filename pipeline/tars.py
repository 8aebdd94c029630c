"""The one tar module: every tar of a build (per-clip tars, rejected-window tars, sidecars, shards) is written
and read here, through webdataset's own writer and reader, with webdataset's one key rule: a member's key is
its name up to the first dot, the rest is the member's extension (`clip-00003.face64.jpg`: key `clip-00003`,
extension `face64.jpg`).

Every file is written under a temporary name unique to the writing process, fsynced, and renamed when
complete, so a killed run never leaves a truncated tar behind.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, by webdataset's rule."""
    key, ext = base_plus_ext(name)
    if key is None:
        raise ValueError(f"tar member {name!r} has no extension")
    return key, ext


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write `path` whole or not at all (a .partial renamed into place); `sync`: on disk before the rename."""
    tmp = partial_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_samples(path: Path, samples: Iterable[dict], mtime: float) -> int:
    """Write samples ({'__key__': key, ext: bytes}) to `path` atomically; returns how many."""
    tmp = partial_path(path)
    n = 0
    with open(tmp, "wb") as f:
        with TarWriter(f, encoder=False, mtime=int(mtime)) as w:  # a float mtime adds a pax header per member
            for sample in samples:
                w.write(sample)
                n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def read_samples(path: Path) -> Iterator[dict]:
    """The samples of a tar, in order, as {'__key__': key, ext: bytes} (webdataset's reader)."""
    with open(path, "rb") as f:
        members = tar_file_expander([{"stream": f, "url": str(path)}])
        for sample in group_by_keys(members, lcase=False):
            sample.pop("__url__", None)
            sample.pop("__local_path__", None)
            yield sample


def member_index(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (offset of the data in the file, size)}}: where each member lies, to read one by offset."""
    index: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if m.isfile():
                key, ext = split_name(m.name)
                index.setdefault(key, {})[ext] = (m.offset_data, m.size)
    return index


def tar_mtime(path: Path) -> float:
    """The mtime of a tar's first member (the build writes every member with the same fixed one)."""
    with tarfile.open(path, "r") as tar:
        first = tar.next()
        return first.mtime if first is not None else 0.0
