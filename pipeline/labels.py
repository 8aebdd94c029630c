"""Integer identity labels that stay stable across builds, and the CAE triplet index, both written next to the
shards at packing time (no media work).

- ``OUT/labels.json``: ``{identity: label}``. Labels are never changed or reused: identities new to a build get
  the next integers, in sorted order. Each sample's json carries its ``identity_label``.
- ``OUT/split_labels.json``: ``{split: {identity: label}}``, contiguous 0..k-1 within each split (what a classifier
  sized to a split's identities needs): the split's identities ranked by their global label, so identities added
  by a later build get the next numbers and no existing one changes. Each sample's json carries its ``split_label``.
- ``OUT/cae_index.json``: ``{"format": 1, "splits": {split: {identity: {"label": n, "samples": [[shard, key],
  ...]}}}}``, so a loader can draw (face of A, voice of B, face of B) without scanning the shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .tars import atomic_write_bytes

LABELS_FILE = "labels.json"
SPLIT_LABELS_FILE = "split_labels.json"
CAE_INDEX_FILE = "cae_index.json"


def read_labels(out: Path) -> dict[str, int]:
    path = Path(out) / LABELS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def update_labels(out: Path, identities: Iterable[str]) -> dict[str, int]:
    """OUT's label map with any new identities appended (sorted, after the highest label); written atomically."""
    labels = read_labels(out)
    new = sorted(set(identities) - set(labels))
    if new or not (Path(out) / LABELS_FILE).exists():
        start = max(labels.values(), default=-1) + 1
        labels.update({identity: start + i for i, identity in enumerate(new)})
        atomic_write_bytes(Path(out) / LABELS_FILE, json.dumps(labels, indent=1, sort_keys=True).encode())
    return labels


def split_labels(labels: dict[str, int], identity_splits: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{split: {identity: 0..k-1}}: each split's identities in the order of their global labels."""
    members: dict[str, set[str]] = {}
    for identity, split in identity_splits:
        members.setdefault(split, set()).add(identity)
    return {
        split: {identity: i for i, identity in enumerate(sorted(ids, key=lambda x: labels[x]))}
        for split, ids in sorted(members.items())
    }


def split_labels_bytes(by_split: dict[str, dict[str, int]]) -> bytes:
    """OUT/split_labels.json's content (written with the shards it describes, pipeline/commit.py)."""
    return json.dumps(by_split, indent=1, sort_keys=True).encode()


def few_identity_splits(by_split: dict[str, dict[str, int]]) -> list[str]:
    """Warnings for splits with fewer than 2 identities (train and val, and any other split in use): identity
    metrics and classifiers mean nothing there."""
    counts = {split: len(by_split.get(split, {})) for split in sorted({"train", "val", *by_split})}
    return [
        f"split {split!r} has {n} identities: identity metrics (top-1 at chance 1/n) and identity losses need 2 or more"
        for split, n in counts.items()
        if n < 2
    ]


class CaeIndex:
    """Collects where each sample was packed; `write` saves OUT/cae_index.json."""

    def __init__(self):
        self.splits: dict[str, dict[str, dict]] = {}

    def add(self, meta: dict, shard: str) -> None:
        entry = self.splits.setdefault(meta["split"], {}).setdefault(
            meta["identity"], {"label": meta.get("identity_label"), "samples": []}
        )
        entry["samples"].append([shard, f"{meta['clip_id']}-{meta['window_index']:05d}"])

    def to_bytes(self) -> bytes:
        """OUT/cae_index.json's content (written with the shards it points into, pipeline/commit.py)."""
        return json.dumps({"format": 1, "splits": self.splits}, sort_keys=True).encode()
