"""A build's bookends, Prefect-free: plan which clips need work, then write clips.jsonl, pack shards
and summarise. The flow in flows/build.py runs the clips in between."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .clip import BuildContext, cached_status, split_of
from .config import Config
from .manifest import Manifest, read_manifest, read_optout
from .media import require_ffmpeg
from .records import Clip, ClipStatus
from .review import ReviewGate, build_clips, fill_queue, load_gate
from .shards import SHARD_DIR, atomic_write_bytes, pack_shards

DEFAULT_OPTOUT = Path(__file__).resolve().parents[1] / "manifests" / "optout.txt"


@dataclass
class BuildPlan:
    ctx: BuildContext
    manifest: Manifest
    todo: list[Clip] = field(default_factory=list)
    cached: dict[str, ClipStatus] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


def plan_build(
    manifest_path: str | Path,
    out: str | Path,
    cfg: Config | None = None,
    mirror: str | Path | None = None,
    optout_files: list[str | Path] | None = None,
) -> BuildPlan:
    """Parse the manifest (honouring the opt-out lists) and split clips into cached and to-do."""
    require_ffmpeg()
    manifest_path = Path(manifest_path)
    out = Path(out)
    optout: set[str] = set()
    for f in [DEFAULT_OPTOUT, *(optout_files or [])]:
        optout |= read_optout(f)
    manifest = read_manifest(manifest_path, optout)
    ctx = BuildContext(
        out=out,
        cfg=cfg or Config(),
        mirror=Path(mirror) if mirror else None,
        base_dir=manifest_path.resolve().parent,
    )
    (ctx.work / "clips").mkdir(parents=True, exist_ok=True)
    plan = BuildPlan(ctx, manifest)
    for clip in manifest.clips:
        if (status := cached_status(clip, ctx)) is not None:
            plan.cached[clip.clip_id] = status
        else:
            plan.todo.append(clip)
    # an opted-out clip's earlier output is deleted, not merely left out of the shards
    for status in manifest.rejected:
        if status.reason == "opted_out":
            for p in (ctx.clip_tar(status.id), ctx.clip_status_path(status.id)):
                p.unlink(missing_ok=True)
    return plan


def finish_build(plan: BuildPlan, done: dict[str, ClipStatus]) -> dict:
    """Write clips.jsonl (one line per manifest row), pack the shards and write summary.json."""
    ctx = plan.ctx
    statuses = {**plan.cached, **done}
    rows: list[ClipStatus] = list(plan.manifest.rejected)
    packed: list[tuple[Path, str]] = []
    for clip in plan.manifest.clips:
        status = statuses[clip.clip_id]
        status.split = split_of(clip, ctx)  # the split is a packing decision: it may change without media work
        rows.append(status)
        if status.status == "ok":
            packed.append((ctx.clip_tar(clip.clip_id), status.split))
    rows.sort(key=lambda s: s.line or 0)
    gate = prepare_review(plan, statuses)
    counts = pack_shards(ctx.out, packed, ctx.cfg.shards, keep=gate)
    if gate is not None:
        gate.annotate(rows)
    lines = [json.dumps(_public_row(s), sort_keys=False) for s in rows]
    atomic_write_bytes(ctx.out / "clips.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
    summary = summarise(plan, rows, counts)
    if gate is not None:
        summary["review"] = gate.totals()
    atomic_write_bytes(ctx.out / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def prepare_review(plan: BuildPlan, statuses: dict[str, ClipStatus]) -> ReviewGate | None:
    """Fill OUT's review queue from the ok clips (if the config says so); the gate its decisions make."""
    ctx = plan.ctx
    if ctx.cfg.review.queue_on_build:
        clips = [(clip, statuses[clip.clip_id]) for clip in plan.manifest.clips]
        fill_queue(ctx.out, build_clips(ctx.out, clips, ctx.mirror, ctx.base_dir), ctx.cfg.review)
    return load_gate(ctx.out, ctx.cfg.review)


def _public_row(s: ClipStatus) -> dict:
    """The contract's fields first, then the extras."""
    d = s.to_dict()
    head = {k: d.pop(k) for k in ("id", "status", "reason", "detail", "windows_written")}
    d.pop("cache_key", None)
    if d.get("review") is None:
        d.pop("review", None)
    return {**head, **d}


def summarise(plan: BuildPlan, rows: list[ClipStatus], counts: dict) -> dict:
    by_status = Counter(r.status for r in rows)
    reasons = Counter(r.reason for r in rows if r.reason)
    window_reasons: Counter[str] = Counter()
    for r in rows:
        window_reasons.update(r.window_rejections)
    identities_per_split: dict[str, set[str]] = {}
    for r in rows:
        if r.status == "ok" and r.identity:
            identities_per_split.setdefault(r.split or "train", set()).add(r.identity)
    return {
        "manifest_rows": len(rows),
        "clips_ok": by_status.get("ok", 0),
        "clips_rejected": by_status.get("rejected", 0),
        "clips_failed": by_status.get("failed", 0),
        "clips_cached": len(plan.cached),
        "clips_processed": len(plan.todo),
        "reasons": dict(reasons.most_common()),
        "window_rejections": dict(window_reasons.most_common()),
        "samples": sum(c["samples"] for c in counts.values()),
        "shards": {split: c["shards"] for split, c in sorted(counts.items())},
        "samples_per_split": {split: c["samples"] for split, c in sorted(counts.items())},
        "identities_per_split": {k: len(v) for k, v in sorted(identities_per_split.items())},
        "seconds": round(time.time() - plan.started, 2),
        "shard_dir": str(plan.ctx.out / SHARD_DIR),
    }


def format_summary(summary: dict) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in summary["reasons"].items()) or "none"
    windows = ", ".join(f"{k}={v}" for k, v in summary["window_rejections"].items()) or "none"
    shards = ", ".join(f"{k}={v}" for k, v in summary["shards"].items()) or "none"
    s = summary
    review = ""
    if r := s.get("review"):
        review = (
            f"review: {r['queued']} windows queued, {r['accepted']} accepted, {r['rejected']} rejected, "
            f"{r['unreviewed_excluded']} held back until reviewed\n"
        )
    return (
        f"clips: {s['clips_ok']} ok, {s['clips_rejected']} rejected, {s['clips_failed']} failed "
        f"of {s['manifest_rows']} rows ({s['clips_processed']} processed, {s['clips_cached']} cached)\n"
        f"clip reasons: {reasons}\n"
        f"window rejections: {windows}\n"
        f"samples: {summary['samples']} in shards {shards}\n"
        f"{review}"
        f"seconds: {summary['seconds']}"
    )
