"""Integer identity labels that stay stable across builds, and the CAE triplet index, both written next to the
shards at packing time (no media work).

- ``OUT/labels.json``: ``{identity: label}``. Labels are never changed or reused: identities new to a build get
  the next integers, in sorted order. Each sample's json carries its ``identity_label``.
- ``OUT/cae_index.json``: ``{"format": 1, "splits": {split: {identity: {"label": n, "samples": [[shard, key],
  ...]}}}}``, so a loader can draw (face of A, voice of B, face of B) without scanning the shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .tars import atomic_write_bytes

LABELS_FILE = "labels.json"
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


class CaeIndex:
    """Collects where each sample was packed; `write` saves OUT/cae_index.json."""

    def __init__(self):
        self.splits: dict[str, dict[str, dict]] = {}

    def add(self, meta: dict, shard: str) -> None:
        entry = self.splits.setdefault(meta["split"], {}).setdefault(
            meta["identity"], {"label": meta.get("identity_label"), "samples": []}
        )
        entry["samples"].append([shard, f"{meta['clip_id']}-{meta['window_index']:05d}"])

    def write(self, out: Path) -> None:
        data = {"format": 1, "splits": self.splits}
        atomic_write_bytes(Path(out) / CAE_INDEX_FILE, json.dumps(data, sort_keys=True).encode())
