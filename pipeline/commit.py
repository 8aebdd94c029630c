"""A build's outputs change together: shards/, clips.jsonl, summary.json, report.html and the index files
(split_labels.json, cae_index.json) are staged first, then committed as one step that a crash cannot split.

Staging writes every file under OUT/.work/commit/ (and the shards under OUT/shards.partial/), each fsynced. Then
a marker file is written and fsynced: from that moment the commit is decided. The shard directory is exchanged
with the new one in a single rename (renameat2 RENAME_EXCHANGE, so there is never a moment without shards/),
the files are renamed into OUT, and the marker is removed. A run that finds the marker (the last one died
during the commit) finishes it; one that finds staging without a marker throws the staging away. Either way
OUT's outputs all come from one packing.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from pathlib import Path

from .tars import fsync_dir

COMMIT_DIR = ".work/commit"
MARKER = "COMMIT"
SHARD_DIR = "shards"


def staging(out: Path) -> Path:
    return Path(out) / COMMIT_DIR


def _staged_name(relpath: str) -> str:
    return relpath.replace("/", "%")  # OUT-relative paths, flattened into the staging directory


def stage_bytes(out: Path, relpath: str, data: bytes) -> None:
    """Stage OUT/<relpath> (put in place at the commit)."""
    with open(stage_path(out, relpath), "wb") as f:
        f.write(data)


def stage_path(out: Path, relpath: str) -> Path:
    """A path to write OUT/<relpath>'s next version to (`commit` fsyncs it)."""
    d = staging(out)
    d.mkdir(parents=True, exist_ok=True)
    return d / _staged_name(relpath)


def commit(out: Path, shards: bool) -> None:
    """Decide the commit (the marker), then carry it out. `shards`: OUT/shards.partial holds new shards."""
    out = Path(out)
    d = staging(out)
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in d.iterdir() if p.name != MARKER)
    staged = [p for p in d.iterdir() if p.name != MARKER]
    new_shards = out / f"{SHARD_DIR}.partial"
    if shards and new_shards.exists():
        staged += list(new_shards.iterdir())
        fsync_dir(new_shards)
    for p in staged:  # durable before the commit is decided
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(d)
    marker = {"files": names, "shards": shards}
    tmp = d / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, d / MARKER)
    fsync_dir(d)
    _carry_out(out, marker)


def recover(out: Path) -> str | None:
    """Finish a commit a crash interrupted, or drop staging that was never committed. Says what it did."""
    out = Path(out)
    d = staging(out)
    if (d / MARKER).exists():
        _carry_out(out, json.loads((d / MARKER).read_text()))
        return "finished an interrupted commit of the outputs"
    did = None
    if d.exists():
        shutil.rmtree(d)
        did = "dropped outputs staged by a run that stopped before committing them"
    staged_shards = out / f"{SHARD_DIR}.partial"
    if staged_shards.exists():
        shutil.rmtree(staged_shards)
        did = did or "dropped shards staged by a run that stopped before committing them"
    old = out / f"{SHARD_DIR}.old"
    if old.exists():
        if (out / SHARD_DIR).exists():
            shutil.rmtree(old)
        else:  # an interrupted two-rename swap (no renameat2 on this filesystem)
            os.replace(old, out / SHARD_DIR)
    return did


def _carry_out(out: Path, marker: dict) -> None:
    """Idempotent: run again after a crash part-way, it finishes the same commit."""
    d = staging(out)
    new, final, old = out / f"{SHARD_DIR}.partial", out / SHARD_DIR, out / f"{SHARD_DIR}.old"
    if marker["shards"] and new.exists():
        if final.exists():
            exchange(new, final)  # shards/ is now the new one, shards.partial the old one
            shutil.rmtree(new)
        else:
            os.replace(new, final)
        fsync_dir(out)
    for name in marker["files"]:
        if (d / name).exists():
            dest = out / name.replace("%", "/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(d / name, dest)
    fsync_dir(out)
    (d / MARKER).unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)
    if old.exists():
        shutil.rmtree(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); where the filesystem or the C library
    cannot, two renames through `<b>.old` (a crash between them is repaired by `recover`)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(a))
    old = b.with_name(b.name + ".old")
    os.replace(b, old)
    os.replace(a, b)
    os.replace(old, a)
