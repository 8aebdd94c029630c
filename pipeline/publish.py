"""Publish: repack OUT's shards from its finished clip tars so that they honour the review decisions.

No manifest and no media work: the clips and their splits come from clips.jsonl and .work/clips, the
decisions from OUT/review/review.db. clips.jsonl and summary.json are rewritten with the reviewed counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .build import BuildPlan, _public_row, summarise
from .clip import BuildContext
from .config import Config
from .review import clips_in_out, load_gate
from .shards import atomic_write_bytes, pack_shards


def publish(out: str | Path, cfg: Config | None = None) -> dict:
    """Rewrite OUT/shards without rejected windows (and, unless the config includes them, without queued
    windows nobody decided); update clips.jsonl and summary.json. Returns the new summary."""
    started = time.time()
    out = Path(out)
    cfg = cfg or Config()
    rows, clips = clips_in_out(out)
    gate = load_gate(out, cfg.review)
    counts = pack_shards(out, [(c.tar, c.split or "train") for c in clips], cfg.shards, keep=gate)
    if gate is not None:
        gate.annotate(rows)
    lines = [json.dumps(_public_row(r)) for r in rows]
    atomic_write_bytes(out / "clips.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
    # what the build measured (clips processed, seconds) belongs to the build; publishing processed nothing
    ok_ids = {c.clip_id for c in clips}
    plan = BuildPlan(BuildContext(out, cfg), manifest=None, started=started)  # type: ignore[arg-type]
    plan.cached = {r.id: r for r in rows if r.id in ok_ids}
    summary = summarise(plan, rows, counts)
    if gate is not None:
        summary["review"] = gate.totals()
    summary["published"] = True
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    return summary
