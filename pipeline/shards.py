"""Packing: the finished per-clip tars (the resumable unit) into WebDataset shards per split.

The shard directory is built under a temporary name and swapped in whole, so a killed run never leaves a
truncated shard or a duplicated sample behind (the tars themselves are written by pipeline/tars.py).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from .commit import commit, recover
from .config import ShardConfig
from .enrich import merge_sidecar, read_sidecar
from .progress import Progress
from .tars import read_samples

SHARD_DIR = "shards"


def clean_interrupted(out: Path) -> None:
    """Resolve what a killed pack left: finish a decided commit, else drop the staged shards and outputs."""
    recover(out)


def pack_shards(
    out: Path,
    clips: Iterable[tuple[Path, str]],
    cfg: ShardConfig,
    keep: Callable[[str, dict], bool] | None = None,
    observe: Callable[[dict, dict], None] | None = None,
    annotate: Callable[[dict], None] | None = None,
    placed: Callable[[dict, str], None] | None = None,
    extra: Callable[[Path], Iterable[dict]] | None = None,
    swap: bool = True,
) -> dict[str, dict[str, int]]:
    """Pack per-clip tars into `out/shards/{split}-NNNNNN.tar` and swap the directory in atomically.

    `clips` is (clip tar, split) in manifest order. Features in the clip's sidecar (pipeline/enrich.py) are
    merged into its samples. The sample json's `split` is set here, so a split
    change needs no media work. `keep(key, meta)` can leave samples out (review decisions);
    `observe(meta, sample)` sees every sample written (for the report); `annotate(meta)` may add to a sample's
    json (identity labels); `placed(meta, shard name)` hears where each sample went; `extra(clip tar)` gives
    more samples of the clip (rejected windows a reviewer put back), merged in key order (the tar may be absent).
    Returns {split: {"samples": n, "shards": m}}.
    """
    import webdataset as wds

    staging = out / f"{SHARD_DIR}.partial"
    if swap:
        clean_interrupted(out)
    elif staging.exists():  # the caller resolved any interrupted commit already; this is a stale staging
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    writers: dict[str, wds.ShardWriter] = {}
    counts: dict[str, dict[str, int]] = {}
    progress = Progress(len(clips) if hasattr(clips, "__len__") else 0, "packing", "clips").__enter__()
    try:
        for tar_path, split in clips:
            progress.advance()
            sidecar = read_sidecar(tar_path)
            own = read_samples(tar_path) if tar_path.exists() else iter(())
            more = extra(tar_path) if extra is not None else ()
            for sample in heapq.merge(own, more, key=lambda s: s["__key__"]):
                meta = json.loads(sample["json"])
                if keep is not None and not keep(sample["__key__"], meta):
                    continue
                merge_sidecar(sample, meta, sidecar)
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
        progress.__exit__(None, None, None)
        for split, w in writers.items():
            counts[split]["shards"] = w.shard
            w.close()
    if swap:  # else the caller commits OUT/shards.partial with the other outputs (pipeline/commit.py)
        commit(out, shards=True)
    return counts
