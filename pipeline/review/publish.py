"""Publish: repack OUT's shards from its finished clip tars so that they honour the review decisions.

No manifest and no media work: the clips and their splits come from clips.jsonl and .work/clips, the
decisions from OUT/review/review.db. clips.jsonl, summary.json and report.html are rewritten with the
reviewed counts.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..build import write_outputs
from ..clip import BuildContext
from ..config import Config
from ..lock import out_lock
from .queue import clips_in_out, load_gate


def publish(out: str | Path, cfg: Config | None = None) -> dict:
    """Rewrite OUT/shards without rejected windows (and, unless the config includes them, without queued
    windows nobody decided); update clips.jsonl, summary.json and report.html. Returns the new summary."""
    with out_lock(out, "voiceface publish"):
        return _publish(Path(out), cfg or Config())


def _publish(out: Path, cfg: Config) -> dict:
    started = time.time()
    rows, clips = clips_in_out(out)
    ran = {c.clip_id for c in clips}
    ctx = BuildContext(out, cfg)
    # what the build measured (clips new, cached, processed) belongs to the build; publishing processed nothing
    gate = load_gate(out, cfg.review)
    if gate is not None:
        ran |= set(gate.rescued)  # clips the build rejected whole, some of whose windows review put back
    summary = write_outputs(ctx, lambda: ((r, r.id in ran) for r in rows), gate, {"published": True}, started)
    summary.pop("report_markdown")
    return summary
