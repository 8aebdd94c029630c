"""Packing: the finished per-clip tars (the resumable unit) into WebDataset shards per split.

The shard directory is built under a temporary name and swapped in whole, so a killed run never leaves a
truncated shard or a duplicated sample behind (the tars themselves are written by pipeline/tars.py).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from .commit import commit, recover, stage_path
from .config import ShardConfig
from .enrich import merge_sidecar, read_sidecar
from .progress import Progress
from .tars import read_samples

SHARD_DIR = "shards"


def clean_interrupted(out: Path) -> None:
    """Resolve what a killed pack left: finish a decided commit, else drop the staged shards and outputs."""
    recover(out)


INDEX_FILE = ".work/shards.sqlite"  # what each shard holds: committed with the shards


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
    fingerprint: Callable[[Path, str], str] | None = None,
    layout: str = "",
    full: bool = False,
) -> dict[str, dict[str, int]]:
    """Pack per-clip tars into `out/shards/{split}-NNNNNN.tar` and swap the directory in atomically.

    `clips` is (clip tar, split) in manifest order. Features in the clip's sidecar (pipeline/enrich.py) are
    merged into its samples. The sample json's `split` is set here, so a split
    change needs no media work. `keep(key, meta)` can leave samples out (review decisions);
    `observe(meta, sample)` sees every sample in the shards (for the report); `annotate(meta)` may add to a
    sample's json (identity labels); `placed(meta, shard name)` hears where each sample is; `extra(clip tar)` gives
    more samples of the clip (rejected windows a reviewer put back), merged in key order (the tar may be absent).

    Incremental: OUT/.work/shards.sqlite records which clips (with `fingerprint(tar, split)`) each shard holds.
    A shard all of whose clips are unchanged is kept as it is (hard-linked into the new shard directory, never
    rewritten); the clips of the other shards and the new clips are packed into new shards, which take the
    numbers left free and then the next ones, so each split's shards stay numbered 0..n-1 (a kept shard may move
    down into a free number). Without an index, with another `layout` (shard settings, pipeline version) or
    with `full`, every shard is written, in manifest order. Kept shards are read (not written) for `observe`,
    `placed`, and the keep-gate's per-clip outcomes come back from the index.
    Returns {split: {"samples": n, "shards": m}}.
    """
    out = Path(out)
    staging = out / f"{SHARD_DIR}.partial"
    if swap:
        clean_interrupted(out)
    elif staging.exists():  # the caller resolved any interrupted commit already; this is a stale staging
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    fingerprint = fingerprint or _file_fingerprint
    index_path = stage_path(out, INDEX_FILE)
    index_path.unlink(missing_ok=True)
    db = sqlite3.connect(index_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")  # commit() fsyncs the file before the commit is decided
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE shards (name TEXT PRIMARY KEY, split TEXT, idx INTEGER, samples INTEGER, size INTEGER);
        CREATE TABLE parts (shard TEXT, clip TEXT, fp TEXT, outcomes TEXT);
        CREATE INDEX parts_clip ON parts (clip);
        CREATE TEMP TABLE cur (ord INTEGER PRIMARY KEY, clip TEXT, split TEXT, fp TEXT, tar TEXT);
        CREATE INDEX temp.cur_clip ON cur (clip);
        CREATE TEMP TABLE dirty (shard TEXT PRIMARY KEY);
        """
    )
    layout = json.dumps([dataclasses.asdict(cfg), layout])  # other shard settings: every shard is written again
    db.execute("INSERT INTO meta VALUES ('layout', ?)", (layout,))
    if (out / INDEX_FILE).exists() and not full:
        db.execute("ATTACH DATABASE ? AS prev", (str(out / INDEX_FILE),))
        full = db.execute("SELECT value FROM prev.meta WHERE key = 'layout'").fetchone() != (layout,)
    else:
        full = True
    db.execute("BEGIN")
    batch = []
    for i, (tar_path, split) in enumerate(clips):
        batch.append((i, tar_path.stem, split, fingerprint(tar_path, split), str(tar_path)))
        if len(batch) >= 2000:
            db.executemany("INSERT INTO cur VALUES (?, ?, ?, ?, ?)", batch)
            batch.clear()
    db.executemany("INSERT INTO cur VALUES (?, ?, ?, ?, ?)", batch)
    kept = _kept_shards(db, out) if not full else []
    counts: dict[str, dict[str, int]] = {}
    outcomes = getattr(keep, "outcomes", None)
    try:
        for name, split, idx in kept:
            _link(out / SHARD_DIR / name, staging / name)
            samples, size = db.execute("SELECT samples, size FROM prev.shards WHERE name = ?", (name,)).fetchone()
            db.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?)", (name, split, idx, samples, size))
            db.execute("INSERT INTO parts SELECT shard, clip, fp, outcomes FROM prev.parts WHERE shard = ?", (name,))
            if outcomes is not None:  # the keep-gate's per-clip counts, as when the shard was written
                q = "SELECT clip, outcomes FROM prev.parts WHERE shard = ? AND outcomes IS NOT NULL"
                for clip, oc in db.execute(q, (name,)):
                    outcomes[clip] = Counter(json.loads(oc))
        new_places = _write_new(db, staging, cfg, keep, observe, annotate, placed is not None, extra)
        renamed = _number(db, staging)
        for split, samples, shards in db.execute("SELECT split, sum(samples), count(*) FROM shards GROUP BY split"):
            counts[split] = {"samples": samples, "shards": shards}
        kept_now = {renamed.get(name, name) for name, _, _ in kept}
        if observe is not None or placed is not None:
            for (name,) in db.execute("SELECT name FROM shards ORDER BY split, idx").fetchall():
                if name in kept_now:  # read, not written: what the report and the indexes need of it
                    for sample in read_samples(staging / name):
                        meta = json.loads(sample["json"])
                        if placed is not None:
                            placed(meta, name)
                        if observe is not None:
                            observe(meta, sample)
        for meta, temp in new_places:
            placed(meta, renamed[temp])
        db.execute("COMMIT")
    finally:
        db.close()
    if swap:  # else the caller commits OUT/shards.partial with the other outputs (pipeline/commit.py)
        commit(out, shards=True)
    return counts


def _file_fingerprint(tar: Path, split: str) -> str:
    st = tar.stat() if tar.exists() else None
    return f"{split}|{st and st.st_size}|{st and st.st_mtime_ns}"


def _kept_shards(db: sqlite3.Connection, out: Path) -> list[tuple[str, str, int]]:
    """The last packing's shards (the index attached as `prev`, of the same layout) that can stay as they are:
    the file in place with its size, and every clip in it still packed, into the same split, with the same
    fingerprint. Returns (name, split, idx)."""
    shard_dir = out / SHARD_DIR
    for name, size in db.execute("SELECT name, size FROM prev.shards").fetchall():
        path = shard_dir / name
        if not path.exists() or path.stat().st_size != size:
            db.execute("INSERT OR IGNORE INTO dirty VALUES (?)", (name,))
    db.execute(
        """INSERT OR IGNORE INTO dirty SELECT DISTINCT p.shard FROM prev.parts p JOIN prev.shards s ON s.name = p.shard
           LEFT JOIN cur c ON c.clip = p.clip AND c.fp = p.fp AND c.split = s.split WHERE c.clip IS NULL"""
    )
    while True:  # a clip split across shards is repacked whole: its other shards go too
        n = db.execute(
            """INSERT OR IGNORE INTO dirty SELECT DISTINCT p2.shard FROM prev.parts p1
               JOIN dirty d ON d.shard = p1.shard JOIN prev.parts p2 ON p2.clip = p1.clip
               WHERE p2.shard NOT IN (SELECT shard FROM dirty)"""
        ).rowcount
        if n <= 0:
            break
    q = "SELECT name, split, idx FROM prev.shards WHERE name NOT IN (SELECT shard FROM dirty) ORDER BY split, idx"
    return db.execute(q).fetchall()


def _shard_name(split: str, idx: int) -> str:
    return f"{split}-{idx:06d}.tar"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the same bytes, not rewritten
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def _write_new(db, staging: Path, cfg: ShardConfig, keep, observe, annotate, want_places: bool, extra) -> list:
    """Pack the clips no kept shard holds, in manifest order, into new shards named `{split}-new-NNNNNN.tar`
    (numbered by `_number`). Returns (meta, temporary shard name) of each sample when `want_places`."""
    import webdataset as wds

    writers: dict[str, wds.ShardWriter] = {}
    sizes: dict[str, list] = {}  # temporary name -> [split, samples]
    places: list[tuple[dict, str]] = []
    outcomes = getattr(keep, "outcomes", None)
    db.execute("CREATE TEMP TABLE todo AS SELECT * FROM cur WHERE clip NOT IN (SELECT clip FROM parts) ORDER BY ord")
    (n_todo,) = db.execute("SELECT count(*) FROM todo").fetchone()
    cur = db.cursor()
    cur.execute("SELECT clip, split, fp, tar FROM todo ORDER BY ord")
    progress = Progress(n_todo, "packing", "clips").__enter__()
    try:
        while chunk := cur.fetchmany(500):
            for clip_id, split, fp, tar in chunk:
                progress.advance()
                tar_path = Path(tar)
                sidecar = read_sidecar(tar_path)
                own = read_samples(tar_path) if tar_path.exists() else iter(())
                more = extra(tar_path) if extra is not None else ()
                shards_of_clip: dict[str, None] = {}
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
                            str(staging / f"{split}-new-%06d.tar"),
                            maxcount=cfg.maxcount,
                            maxsize=cfg.maxsize,
                            verbose=0,
                            encoder=False,
                            mtime=int(cfg.mtime),
                        )
                    writers[split].write(sample)
                    name = os.path.basename(writers[split].fname)
                    sizes.setdefault(name, [split, 0])[1] += 1
                    shards_of_clip[name] = None
                    if want_places:
                        places.append((meta, name))
                    if observe is not None:
                        observe(meta, sample)
                oc = outcomes.get(clip_id) if outcomes is not None else None
                oc_json = json.dumps(dict(oc), sort_keys=True) if oc is not None else None
                db.executemany(
                    "INSERT INTO parts VALUES (?, ?, ?, ?)", [(n, clip_id, fp, oc_json) for n in shards_of_clip]
                )
    finally:
        progress.__exit__(None, None, None)
        for w in writers.values():
            w.close()
    for name, (split, samples) in sizes.items():
        idx = int(name.rsplit("-", 1)[1].split(".")[0])
        db.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?)", (name, split, -1 - idx, samples, 0))
    return places


def _number(db, staging: Path) -> dict[str, str]:
    """Give each split's shards the numbers 0..n-1: kept shards keep theirs where they can, the others (new ones
    in the order written, then kept ones from above n) fill the free numbers in order. Returns old -> new name."""
    rename: dict[str, str] = {}
    for (split,) in db.execute("SELECT DISTINCT split FROM shards ORDER BY split").fetchall():
        rows = db.execute("SELECT name, idx FROM shards WHERE split = ?", (split,)).fetchall()
        total = len(rows)
        kept = sorted((idx, name) for name, idx in rows if idx >= 0)
        new = sorted((-1 - idx, name) for name, idx in rows if idx < 0)
        taken = {idx for idx, _ in kept if idx < total}
        free = iter(i for i in range(total) if i not in taken)
        moving = [name for _, name in new] + [name for idx, name in kept if idx >= total]
        for name in moving:
            idx = next(free)
            rename[name] = _shard_name(split, idx)
            os.replace(staging / name, staging / rename[name])
            size = (staging / rename[name]).stat().st_size
            db.execute("UPDATE shards SET name = ?, idx = ?, size = ? WHERE name = ?", (rename[name], idx, size, name))
            db.execute("UPDATE parts SET shard = ? WHERE shard = ?", (rename[name], name))
    return rename
