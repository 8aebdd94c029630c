"""Sample tars: one finished tar per clip (the resumable unit), then packed into WebDataset shards.

Every file is written under a temporary name and renamed when complete, and the shard directory is
swapped in whole, so a killed run never leaves a truncated tar or a duplicated sample behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .config import ShardConfig

SHARD_DIR = "shards"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_clip_tar(path: Path, samples: Iterable[dict], mtime: float) -> int:
    """Write samples (dicts of bytes with __key__) to `path` atomically; returns how many."""
    import webdataset as wds

    tmp = path.with_name(path.name + ".partial")
    n = 0
    with open(tmp, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=int(mtime)) as w:
            for sample in samples:
                w.write(sample)
                n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def read_clip_tar(path: Path) -> Iterator[dict]:
    """Samples of a tar, in order, as {'__key__': key, ext: bytes}. Keys split at the first dot."""
    sample: dict | None = None
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key}
            sample[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if sample is not None:
        yield sample


def clean_interrupted(out: Path) -> None:
    """Remove what a killed pack left: the staging dir, and restore a shard dir caught mid-swap."""
    staging, old, final = out / f"{SHARD_DIR}.partial", out / f"{SHARD_DIR}.old", out / SHARD_DIR
    if staging.exists():
        shutil.rmtree(staging)
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


def pack_shards(
    out: Path,
    clips: Iterable[tuple[Path, str]],
    cfg: ShardConfig,
    keep: Callable[[str, dict], bool] | None = None,
    observe: Callable[[dict, dict], None] | None = None,
    annotate: Callable[[dict], None] | None = None,
    placed: Callable[[dict, str], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Pack per-clip tars into `out/shards/{split}-NNNNNN.tar` and swap the directory in atomically.

    `clips` is (clip tar, split) in manifest order. The sample json's `split` is set here, so a split
    change needs no media work. `keep(key, meta)` can leave samples out (review decisions);
    `observe(meta, sample)` sees every sample written (for the report); `annotate(meta)` may add to a sample's
    json (identity labels); `placed(meta, shard name)` hears where each sample went.
    Returns {split: {"samples": n, "shards": m}}.
    """
    import webdataset as wds

    clean_interrupted(out)
    staging = out / f"{SHARD_DIR}.partial"
    staging.mkdir(parents=True)
    writers: dict[str, wds.ShardWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    try:
        for tar_path, split in clips:
            for sample in read_clip_tar(tar_path):
                meta = json.loads(sample["json"])
                if keep is not None and not keep(sample["__key__"], meta):
                    continue
                meta["split"] = split
                if annotate is not None:
                    annotate(meta)
                sample["json"] = json.dumps(meta, sort_keys=True).encode()
                if split not in writers:  # ShardWriter opens a file at once: only for splits in use
                    writers[split] = wds.ShardWriter(
                        str(staging / f"{split}-%06d.tar"),
                        maxcount=cfg.maxcount,
                        maxsize=cfg.maxsize,
                        verbose=0,
                        encoder=False,
                        mtime=int(cfg.mtime),
                    )
                    counts[split] = {"samples": 0, "shards": 0}
                writers[split].write(sample)
                counts[split]["samples"] += 1
                if placed is not None:
                    placed(meta, os.path.basename(writers[split].fname))
                if observe is not None:
                    observe(meta, sample)
    finally:
        for split, w in writers.items():
            counts[split]["shards"] = w.shard
            w.close()
    final, old = out / SHARD_DIR, out / f"{SHARD_DIR}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
    return counts
