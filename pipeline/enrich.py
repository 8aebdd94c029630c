"""Sidecars: features computed after a clip is finished (VGG-Face, on a GPU, in batches across clips) are kept
beside the clip's tar, never written into it, and merged into the samples when the shards are packed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .tars import read_samples

MEMBER = "vggface.npy"  # float16 (4096,) per sample
SIDECAR_DIR = "vggface"  # OUT/.work/vggface/<clip id>.tar, beside OUT/.work/clips/<clip id>.tar


def sidecar_path(clip_tar: Path) -> Path:
    """Where a clip tar's features go: a tar of their own, so the finished clip tar is never rewritten."""
    return clip_tar.parent.parent / SIDECAR_DIR / clip_tar.name


def crop_digest(jpg: bytes) -> str:
    return hashlib.sha1(jpg).hexdigest()


def read_sidecar(clip_tar: Path) -> dict[str, tuple[bytes, dict]]:
    """{key: (vggface.npy bytes, {"record": settings, "jpg_sha1": the crop it was computed from})}."""
    path = sidecar_path(clip_tar)
    if not path.exists():
        return {}
    return {s["__key__"]: (s[MEMBER], json.loads(s["vggface.json"])) for s in read_samples(path)}


def merge_sidecar(sample: dict, meta: dict, sidecar: dict[str, tuple[bytes, dict]]) -> None:
    """Give a sample being packed its feature, when the sidecar has one computed from this very crop."""
    found = sidecar.get(sample["__key__"])
    if found is not None and "jpg" in sample and found[1]["jpg_sha1"] == crop_digest(sample["jpg"]):
        sample[MEMBER] = found[0]
        meta["vggface"] = found[1]["record"]
