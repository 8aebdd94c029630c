"""Incremental packing: unchanged shards are kept (same file, same bytes), new and changed clips go into new shards,
each split stays numbered 0..n-1, and a full repack gives the layout of a fresh build."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.config import ShardConfig
from pipeline.shards import pack_shards
from pipeline.tars import read_samples, write_samples

CFG = ShardConfig(maxcount=3)


def make_clip(d: Path, clip_id: str, n: int, tag: str = "") -> Path:
    """A clip tar of `n` samples (the json pack_shards reads, and a payload that `tag` changes)."""
    d.mkdir(parents=True, exist_ok=True)
    samples = [
        {
            "__key__": f"{clip_id}-{i:05d}",
            "json": json.dumps({"clip_id": clip_id, "identity": clip_id, "window_index": i}).encode(),
            "wav": f"{clip_id}{i}{tag}".encode() * 50,
        }
        for i in range(n)
    ]
    path = d / f"{clip_id}.tar"
    write_samples(path, samples, 0)
    return path


def shard_files(out: Path) -> dict[str, tuple[int, str]]:
    """name -> (inode, sha1) of each shard."""
    return {
        p.name: (p.stat().st_ino, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted((out / "shards").glob("*.tar"))
    }


def keys_by_shard(out: Path) -> dict[str, list[str]]:
    return {p.name: [s["__key__"] for s in read_samples(p)] for p in sorted((out / "shards").glob("*.tar"))}


def all_keys(out: Path) -> set[str]:
    return {k for keys in keys_by_shard(out).values() for k in keys}


@pytest.fixture
def clips(tmp_path):
    d = tmp_path / "clips"
    return {c: make_clip(d, c, n) for c, n in [("a", 3), ("b", 2), ("c", 4), ("d", 1), ("e", 3)]}


def test_new_clips_go_into_new_shards_and_unchanged_shards_are_not_rewritten(clips, tmp_path):
    out = tmp_path / "out"
    first = [(clips[c], "train") for c in "abc"]
    counts = pack_shards(out, first, CFG)
    assert counts == {"train": {"samples": 9, "shards": 3}}
    before = shard_files(out)

    counts = pack_shards(out, first + [(clips["d"], "train"), (clips["e"], "val")], CFG)
    after = shard_files(out)
    assert counts == {"train": {"samples": 10, "shards": 4}, "val": {"samples": 3, "shards": 1}}
    for name, (inode, sha) in before.items():  # the same file (hard link): never rewritten
        assert after[name] == (inode, sha)
    assert keys_by_shard(out)["train-000003.tar"] == ["d-00000"]
    assert keys_by_shard(out)["val-000000.tar"] == ["e-00000", "e-00001", "e-00002"]

    again = pack_shards(out, first + [(clips["d"], "train"), (clips["e"], "val")], CFG)
    assert again == counts and shard_files(out) == after  # nothing changed: nothing rewritten


def test_a_changed_or_removed_clip_rewrites_only_its_shards_and_numbers_stay_contiguous(clips, tmp_path):
    out = tmp_path / "out"
    rows = [(clips[c], "train") for c in "abcde"]
    pack_shards(out, rows, CFG)
    before = shard_files(out)
    # a a a | b b c | c c c | d e e | e : b changes, so its shard goes, and c's other shard with it (a clip is
    # repacked whole); a's shard and the d/e shards stay
    assert keys_by_shard(out)["train-000001.tar"] == ["b-00000", "b-00001", "c-00000"]
    clips["b"].unlink()
    make_clip(clips["b"].parent, "b", 2, tag="changed")
    os.utime(clips["b"], ns=(1, 1))  # a different mtime whatever the clock's resolution
    pack_shards(out, rows, CFG)
    after = shard_files(out)
    assert sorted(after) == [f"train-{i:06d}.tar" for i in range(5)]
    for n in ("train-000000.tar", "train-000003.tar", "train-000004.tar"):
        assert after[n] == before[n]
    assert after["train-000001.tar"][1] != before["train-000001.tar"][1]
    changed = {s["__key__"]: s["wav"] for p in (out / "shards").glob("*.tar") for s in read_samples(p)}
    assert changed["b-00000"].endswith(b"changed") and all_keys(out) == {k for k in changed}
    assert len(changed) == 13

    # a clip removed: its shards go, the rest keep their bytes and the numbers close up
    rows = [(clips[c], "train") for c in "abde"]
    pack_shards(out, rows, CFG)
    names = sorted(shard_files(out))
    assert names == [f"train-{i:06d}.tar" for i in range(len(names))]
    assert not any(k.startswith("c-") for k in all_keys(out)) and len(all_keys(out)) == 9
    assert {h for _, h in shard_files(out).values()} & {h for _, h in after.values()}  # some kept as they were


def test_split_change_moves_the_clip_and_full_repack_equals_a_fresh_build(clips, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    pack_shards(out, [(clips[c], "train") for c in "abcde"], CFG)
    moved = [(clips[c], "val" if c == "c" else "train") for c in "abcde"]
    pack_shards(out, moved, CFG)
    by_shard = keys_by_shard(out)
    assert {k for n, keys in by_shard.items() if n.startswith("val-") for k in keys} == {f"c-{i:05d}" for i in range(4)}
    assert not any(k.startswith("c-") for n, keys in by_shard.items() if n.startswith("train-") for k in keys)
    for p in (out / "shards").glob("val-*.tar"):
        assert all(json.loads(s["json"])["split"] == "val" for s in read_samples(p))

    pack_shards(out, moved, CFG, full=True)
    pack_shards(fresh, moved, CFG)
    assert {n: h for n, (_, h) in shard_files(out).items()} == {n: h for n, (_, h) in shard_files(fresh).items()}
    other = ShardConfig(maxcount=2)  # another layout: everything is written again, in manifest order
    pack_shards(out, moved, other)
    pack_shards(fresh, moved, other, full=True)
    assert {n: h for n, (_, h) in shard_files(out).items()} == {n: h for n, (_, h) in shard_files(fresh).items()}
