"""Identity-level split assignment: a stable hash, so an identity never lands in two splits."""

from __future__ import annotations

import hashlib

from .config import ShardConfig


def split_for_identity(identity: str, cfg: ShardConfig) -> str:
    digest = hashlib.sha1(f"{cfg.split_salt}:{identity}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1), the same on every machine
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"
