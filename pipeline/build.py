"""A build's bookends, Prefect-free: plan which clips need work, then write clips.jsonl, pack shards, and
write summary.json and report.html. The flow in flows/build.py runs the clips in between.

Everything after planning streams: statuses are read back from the per-clip records on disk, so memory does
not grow with the number of clips beyond the manifest itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import PIPELINE_VERSION
from .clip import BuildContext, cached_status, read_status, split_of
from .config import Config
from .manifest import Manifest, read_manifest, read_optout
from .media import require_ffmpeg
from .records import Clip, ClipStatus
from .report import RunReport
from .shards import SHARD_DIR, atomic_write_bytes, clean_interrupted, pack_shards

DEFAULT_OPTOUT = Path(__file__).resolve().parents[1] / "manifests" / "optout.txt"


@dataclass
class BuildPlan:
    ctx: BuildContext
    manifest: Manifest
    todo: list[Clip] = field(default_factory=list)
    n_new: int = 0  # never processed
    n_cached: int = 0  # done earlier with the same settings and pipeline version: no media work
    n_redone: int = 0  # done earlier, but the settings or version changed, or it failed in a retryable way
    started: float = field(default_factory=time.time)


def plan_build(
    manifest_path: str | Path,
    out: str | Path,
    cfg: Config | None = None,
    mirror: str | Path | None = None,
    optout_files: list[str | Path] | None = None,
) -> BuildPlan:
    """Parse the manifest (honouring the opt-out lists) and sort clips into new, cached and redone."""
    require_ffmpeg()
    manifest_path = Path(manifest_path)
    optout: set[str] = set()
    for f in [DEFAULT_OPTOUT, *(optout_files or [])]:
        optout |= read_optout(f)
    manifest = read_manifest(manifest_path, optout)
    ctx = BuildContext(
        out=Path(out),
        cfg=cfg or Config(),
        mirror=Path(mirror) if mirror else None,
        base_dir=manifest_path.resolve().parent,
    )
    (ctx.work / "clips").mkdir(parents=True, exist_ok=True)
    plan = BuildPlan(ctx, manifest)
    for clip in manifest.clips:
        if cached_status(clip, ctx) is not None:
            plan.n_cached += 1
            continue
        plan.todo.append(clip)
        if ctx.clip_status_path(clip.clip_id).exists():
            plan.n_redone += 1
        else:
            plan.n_new += 1
    # an opted-out clip's earlier output is deleted, not merely left out of the shards
    for status in manifest.rejected:
        if status.reason == "opted_out":
            for p in (ctx.clip_tar(status.id), ctx.clip_status_path(status.id)):
                p.unlink(missing_ok=True)
    return plan


def describe_plan(plan: BuildPlan, manifest_path: str | Path) -> list[str]:
    """What a build is about to do, and every row it will not process, with the reason."""
    m = plan.manifest
    lines = [
        f"manifest {manifest_path}: {m.n_rows} rows ({m.format}); {plan.n_new} new, {plan.n_cached} cached, "
        f"{plan.n_redone} to redo; {len(m.rejected)} not processed"
    ]
    lines += [f"  skipped {bad.id}: {bad.reason}: {bad.detail}" for bad in m.rejected]
    lines += [f"  warning: {w}" for w in m.warnings]
    return lines


def output_paths(out: str | Path) -> str:
    out = Path(out)
    return (
        f"shards: {out / SHARD_DIR}\nclips: {out / 'clips.jsonl'}\n"
        f"report: {out / 'report.html'} (and {out / 'summary.json'})"
    )


def _rows(plan: BuildPlan) -> Iterator[tuple[ClipStatus, Clip | None]]:
    """Every manifest row's status in line order: rejected rows from the manifest, the rest from disk."""
    ctx = plan.ctx
    rejected = ((s.line or 0, i, s, None) for i, s in enumerate(plan.manifest.rejected))
    clips = ((c.line, -1, c.clip_id, c) for c in plan.manifest.clips)
    for _, _, item, clip in heapq.merge(rejected, clips, key=lambda t: (t[0], t[1])):
        if clip is None:
            yield item, None
            continue
        status = read_status(ctx, clip.clip_id)
        if status is None:
            raise RuntimeError(f"clip {clip.clip_id} has no recorded status; the build did not run it")
        status.split = split_of(clip, ctx)  # a packing decision: it may change without media work
        yield status, clip


def finish_build(plan: BuildPlan) -> dict:
    """Write clips.jsonl (one line per manifest row), pack the shards, write summary.json and report.html."""
    ctx = plan.ctx
    report = RunReport()
    by_status: Counter[str] = Counter()
    partial = ctx.out / "clips.jsonl.partial"
    with open(partial, "w") as f:
        for status, _ in _rows(plan):
            f.write(json.dumps(_public_row(status)) + "\n")
            report.add_status(status)
            by_status[status.status] += 1
    counts = _pack_unless_unchanged(plan, report)
    os.replace(partial, ctx.out / "clips.jsonl")
    summary = summarise(plan, report, by_status, counts)
    atomic_write_bytes(ctx.out / "summary.json", json.dumps(summary, indent=2).encode())
    atomic_write_bytes(ctx.out / "report.html", report.html(summary).encode())
    summary["report_markdown"] = report.markdown(summary)
    return summary


def _pack_unless_unchanged(plan: BuildPlan, report: RunReport) -> dict:
    """Pack the shards, unless the inputs of the last packing (the same clip tars, splits and shard settings)
    are unchanged and its shards are still in place: then they already are what packing would write."""
    ctx = plan.ctx
    packed = [(ctx.clip_tar(s.id), s.split) for s, clip in _rows(plan) if clip is not None and s.status == "ok"]
    digest = hashlib.sha1(repr((PIPELINE_VERSION, dataclasses.asdict(ctx.cfg.shards))).encode())
    for tar, split in packed:
        st = tar.stat()
        digest.update(f"{tar.name}|{split}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    record = ctx.work / "pack.json"
    if record.exists():
        last = json.loads(record.read_text())
        expected = {f"{split}-{i:06d}.tar" for split, c in last["counts"].items() for i in range(c["shards"])}
        present = {p.name for p in (ctx.out / SHARD_DIR).glob("*.tar")}
        if last["fingerprint"] == digest.hexdigest() and present == expected:
            clean_interrupted(ctx.out)
            report.restore_sample_state(last["report"])
            return last["counts"]
    counts = pack_shards(ctx.out, packed, ctx.cfg.shards, observe=lambda meta, s: report.add_sample(meta, s["jpg"]))
    state = {"fingerprint": digest.hexdigest(), "counts": counts, "report": report.sample_state()}
    atomic_write_bytes(record, json.dumps(state).encode())
    return counts


def _public_row(s: ClipStatus) -> dict:
    """The contract's fields first, then the extras."""
    d = s.to_dict()
    head = {k: d.pop(k) for k in ("id", "status", "reason", "detail", "windows_written")}
    d.pop("cache_key", None)
    return {**head, **d}


def summarise(plan: BuildPlan, report: RunReport, by_status: Counter, counts: dict) -> dict:
    identities_per_split = Counter(v[0] for v in report.identities.values() if v[2] > 0)
    return {
        "manifest_rows": sum(by_status.values()),
        "clips_ok": by_status.get("ok", 0),
        "clips_rejected": by_status.get("rejected", 0),
        "clips_failed": by_status.get("failed", 0),
        "clips_new": plan.n_new,
        "clips_cached": plan.n_cached,
        "clips_redone": plan.n_redone,
        "clips_processed": len(plan.todo),
        "reasons": dict(report.reasons.most_common()),
        "window_rejections": dict(report.window_reasons.most_common()),
        "funnel": dict(report.funnel_rows()),
        "samples": sum(c["samples"] for c in counts.values()),
        "shards": {split: c["shards"] for split, c in sorted(counts.items())},
        "samples_per_split": {split: c["samples"] for split, c in sorted(counts.items())},
        "identities_per_split": dict(sorted(identities_per_split.items())),
        "seconds": round(time.time() - plan.started, 2),
        "shard_dir": str(plan.ctx.out / SHARD_DIR),
    }


def format_summary(summary: dict) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in summary["reasons"].items()) or "none"
    windows = ", ".join(f"{k}={v}" for k, v in summary["window_rejections"].items()) or "none"
    shards = ", ".join(f"{k}={v}" for k, v in summary["shards"].items()) or "none"
    s = summary
    return (
        f"clips: {s['clips_ok']} ok, {s['clips_rejected']} rejected, {s['clips_failed']} failed "
        f"of {s['manifest_rows']} rows ({s['clips_new']} new, {s['clips_cached']} cached, {s['clips_redone']} redone)\n"
        f"clip reasons: {reasons}\n"
        f"window rejections: {windows}\n"
        f"samples: {summary['samples']} in shards {shards}\n"
        f"seconds: {summary['seconds']}"
    )
