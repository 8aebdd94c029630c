"""A build's bookends, Prefect-free: plan which clips need work, then write clips.jsonl, pack shards, and
write summary.json and report.html. The flow in flows/build.py runs the clips in between.

Everything after planning streams: statuses are read back from the per-clip records on disk, so memory does
not grow with the number of clips beyond the manifest itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import PIPELINE_VERSION
from .clip import BuildContext, is_cached, read_status, split_of
from .commit import commit, recover, stage_bytes, stage_path
from .config import Config
from .enrich import sidecar_path
from .labels import (
    CAE_INDEX_FILE,
    LABELS_FILE,
    SPLIT_LABELS_FILE,
    CaeIndex,
    few_identity_splits,
    split_labels,
    split_labels_bytes,
    update_labels,
)
from .manifest import Manifest, iter_manifest, read_optout
from .media import require_ffmpeg
from .records import Clip, ClipStatus
from .report import RunReport
from .rowstore import CACHED, NEW, REDONE, ROWS_FILE, RowStore
from .shards import SHARD_DIR, clean_interrupted, pack_shards
from .tars import read_samples

DEFAULT_OPTOUT = Path(__file__).resolve().parents[1] / "manifests" / "optout.txt"


@dataclass
class BuildPlan:
    """A planned build. Its rows live on disk (pipeline/rowstore.py), so a plan's memory does not grow with the
    manifest: `todo` and `clips()` stream them in line order."""

    ctx: BuildContext
    store: RowStore
    format: str = "generic"
    warnings: list[str] = field(default_factory=list)
    n_new: int = 0  # never processed
    n_cached: int = 0  # done earlier with the same settings and pipeline version: no media work
    n_redone: int = 0  # done earlier, but the settings or version changed, or it failed in a retryable way
    n_rejected: int = 0  # rows not processed: bad rows, duplicates, opt-outs
    repack: bool = False  # rewrite every shard, not only those whose clips changed
    clips_seconds: float | None = None  # wall time of the clip work alone (no start-up, no packing), once run
    started: float = field(default_factory=time.time)

    @property
    def todo(self) -> Todo:
        """The clips that need work (new and redone), in line order."""
        return Todo(self)

    def clips(self) -> Iterator[Clip]:
        """Every clip to be in the build (not the rejected rows), in line order."""
        return (clip for clip, _ in self.store.clips())

    @property
    def n_clips(self) -> int:
        """Rows that are clips of the build (all but the rejected rows)."""
        return self.n_new + self.n_cached + self.n_redone

    @property
    def n_rows(self) -> int:
        return self.n_new + self.n_cached + self.n_redone + self.n_rejected


class Todo:
    """A plan's clips to process: iterable (again and again, from disk), sized, true when not empty."""

    def __init__(self, plan: BuildPlan):
        self.plan = plan

    def __iter__(self) -> Iterator[Clip]:
        return (clip for clip, _ in self.plan.store.clips(NEW, REDONE))

    def __len__(self) -> int:
        return self.plan.n_new + self.plan.n_redone

    def __bool__(self) -> bool:
        return len(self) > 0

    def any_youtube(self) -> bool:
        return self.plan.store.any_youtube(NEW, REDONE)


def optout_ids(optout_files: list[str | Path] | None = None) -> set[str]:
    """The ids and sources opted out: the project's list and the given files."""
    optout: set[str] = set()
    for f in [DEFAULT_OPTOUT, *(optout_files or [])]:
        optout |= read_optout(f)
    return optout


def plan_build(
    manifest_path: str | Path,
    out: str | Path,
    cfg: Config | None = None,
    mirror: str | Path | None = None,
    optout_files: list[str | Path] | None = None,
    repack: bool = False,
) -> BuildPlan:
    """Stream the manifest (honouring the opt-out lists) into OUT/.work/rows.sqlite, sorting its clips into new,
    cached and redone. `repack`: the finish rewrites every shard."""
    require_ffmpeg()
    manifest_path = Path(manifest_path)
    optout = optout_ids(optout_files)
    ctx = BuildContext(
        out=Path(out),
        cfg=cfg or Config(),
        mirror=Path(mirror) if mirror else None,
        base_dir=manifest_path.resolve().parent,
    )
    (ctx.work / "clips").mkdir(parents=True, exist_ok=True)
    remove_partials(ctx.out)
    store = RowStore(ctx.work / ROWS_FILE, fresh=True)
    plan = BuildPlan(ctx, store, repack=repack)
    header = Manifest()
    store.begin()
    for item in iter_manifest(manifest_path, optout, store.seen, header):
        if isinstance(item, ClipStatus):
            store.add_rejected(item)
            plan.n_rejected += 1
            if item.reason == "opted_out":  # its earlier output is deleted, not merely left out of the shards
                for p in (ctx.clip_tar(item.id), ctx.clip_status_path(item.id)):
                    p.unlink(missing_ok=True)
            continue
        status = read_status(ctx, item.clip_id)
        if status is not None and is_cached(status, ctx):
            plan.n_cached += 1
            store.add_clip(item, CACHED, status)
        elif status is not None:
            plan.n_redone += 1
            store.add_clip(item, REDONE)
        else:
            plan.n_new += 1
            store.add_clip(item, NEW)
    plan.format = header.format
    plan.warnings = header.warnings + store.finish()
    return plan


def needs_work(
    manifest_path: str | Path, out: str | Path, cfg: Config, optout_files: list[str | Path] | None = None
) -> bool:
    """Whether some clip of the manifest has no final status under these settings. Stops at the first one, so
    asking costs next to nothing for a new build (a full plan reads every row)."""
    ctx = BuildContext(out=Path(out), cfg=cfg, mirror=None, base_dir=Path(manifest_path).resolve().parent)
    for item in iter_manifest(manifest_path, optout_ids(optout_files), set()):
        if isinstance(item, Clip):
            status = read_status(ctx, item.clip_id)
            if status is None or not is_cached(status, ctx):
                return True
    return False


def remove_partials(out: Path) -> None:
    """Delete what killed runs left half-written (`*.partial`); the caller holds OUT's lock, so no run is writing."""
    out = Path(out)
    for d in (out, out / ".work" / "clips", out / ".work" / "rejected", out / ".work" / "vggface"):
        if d.is_dir():
            for p in d.glob("*.partial"):
                if p.is_file():
                    p.unlink(missing_ok=True)
    clean_interrupted(out)


SKIPPED_SHOWN = 50  # rows not processed that the plan prints (clips.jsonl lists them all)


def describe_plan(plan: BuildPlan, manifest_path: str | Path) -> list[str]:
    """What a build is about to do, and the rows it will not process, with the reason (the first ones)."""
    lines = [
        f"manifest {manifest_path}: {plan.n_rows} rows ({plan.format}); {plan.n_new} new, {plan.n_cached} cached, "
        f"{plan.n_redone} to redo; {plan.n_rejected} not processed"
    ]
    lines += [f"  skipped {bad.id}: {bad.reason}: {bad.detail}" for bad in plan.store.rejected(SKIPPED_SHOWN)]
    if plan.n_rejected > SKIPPED_SHOWN:
        lines.append(f"  ... and {plan.n_rejected - SKIPPED_SHOWN} more rows not processed (see clips.jsonl)")
    lines += [f"  warning: {w}" for w in plan.warnings]
    return lines


def output_paths(out: str | Path) -> str:
    out = Path(out)
    return (
        f"shards: {out / SHARD_DIR}\nclips: {out / 'clips.jsonl'}\n"
        f"report: {out / 'report.html'} (and {out / 'summary.json'})"
    )


def _rows(plan: BuildPlan) -> Iterator[tuple[ClipStatus, bool]]:
    """Every manifest row's status in line order, and whether a clip was run for it: rejected rows come from
    the manifest, the rest from the clips' records on disk."""
    ctx = plan.ctx
    for clip, status in plan.store.rows():
        if isinstance(clip, ClipStatus):
            yield clip, False
            continue
        if status is None:  # not heard from its batch (e.g. a lost worker's): the record on disk
            status = read_status(ctx, clip.clip_id)
        if status is None:
            raise RuntimeError(f"clip {clip.clip_id} has no recorded status; the build did not run it")
        status.split = split_of(clip, ctx)  # a packing decision: it may change without media work
        status.line = clip.line  # this manifest's line, whichever build made the clip
        yield status, True


class KeepGate(Protocol):
    """What packing asks of a curation step (pipeline/review provides one): which samples ship, and their counts."""

    outcomes: dict[str, Counter]
    rescued: dict  # clip id -> the rejected windows put back, which `extra` yields at packing

    def __call__(self, key: str, meta: dict) -> bool: ...
    def extra(self, clip_tar: Path) -> Iterable[dict]: ...
    def annotate(self, rows: list[ClipStatus]) -> None: ...
    def fingerprint(self) -> str: ...
    def totals(self) -> dict: ...


def finish_build(plan: BuildPlan, curate: Callable[[BuildPlan], KeepGate | None] | None = None) -> dict:
    """Pack the shards (through the keep-gate `curate(plan)` returns, if any: the review queue's decisions),
    write clips.jsonl (one line per manifest row), summary.json and report.html."""
    ctx = plan.ctx
    gate = curate(plan) if curate is not None else None
    run = {"clips_new": plan.n_new, "clips_cached": plan.n_cached, "clips_redone": plan.n_redone}
    run["clips_processed"] = len(plan.todo)
    if plan.clips_seconds is not None:
        run["clips_seconds"] = plan.clips_seconds
    return write_outputs(ctx, lambda: _rows(plan), gate, run, plan.started, repack=plan.repack)


def write_outputs(
    ctx: BuildContext,
    rows: Callable[[], Iterable[tuple[ClipStatus, bool]]],
    gate: KeepGate | None,
    run: dict,
    started: float,
    repack: bool = False,
) -> dict:
    """Pack the ok clips of `rows()` (line-ordered statuses, read twice), then write clips.jsonl, summary.json
    and report.html. Shared by the build and by publishing after review. Shards whose clips did not change are
    kept as they are; `repack` rewrites them all."""
    report = RunReport()
    rescued = gate.rescued if gate is not None else {}
    # the ok clips, spooled to a scratch file in one pass over the rows: packing reads them more than once
    ok_file = ctx.work / "ok-clips.jsonl"
    ctx.work.mkdir(parents=True, exist_ok=True)
    with open(ok_file, "w") as f:
        for s, ran in rows():
            if ran and (s.status == "ok" or s.id in rescued):
                f.write(json.dumps([s.id, s.split, s.identity]) + "\n")

    def ok() -> Iterator[tuple[str, str, str | None]]:
        with open(ok_file) as f:
            for line in f:
                yield tuple(json.loads(line))

    labels = by_split = None  # once OUT has a label map, every packing keeps it up to date
    if ctx.cfg.extras.labels or (ctx.out / LABELS_FILE).exists():
        labels = update_labels(ctx.out, (i for _, _, i in ok() if i is not None))
        by_split = split_labels(labels, ((i, split) for _, split, i in ok() if i is not None))
    few: dict[str, dict[str, int]] = {}  # up to 2 identities a split: enough to warn about splits with fewer
    for _, split, identity in ok():
        if len(seen := few.setdefault(split, {})) < 2:
            seen[identity] = 0
    warnings = few_identity_splits(by_split or few)
    for w in warnings:
        print(f"warning: {w}", flush=True)
    recover(ctx.out)  # outputs a killed run left staged: its commit finished, or its staging dropped
    packed = lambda: ((ctx.clip_tar(cid), split) for cid, split, _ in ok())  # noqa: E731
    counts, new_shards = _pack_unless_unchanged(ctx, packed, report, gate, labels, by_split, repack)
    if by_split is not None:  # staged after packing, which drops what a killed run left staged
        stage_bytes(ctx.out, SPLIT_LABELS_FILE, split_labels_bytes(by_split))
    ok_file.unlink(missing_ok=True)
    by_status: Counter[str] = Counter()
    with open(stage_path(ctx.out, "clips.jsonl"), "w") as f:
        for status, ran in rows():
            if gate is not None and ran:
                gate.annotate([status])  # windows_written = what the shards hold after review
            f.write(json.dumps(_public_row(status)) + "\n")
            report.add_status(status)
            if ran and report.wants_window_examples(status):
                add_rejected_examples(ctx, status.id, report)
            by_status[status.status] += 1
    summary = summarise(ctx, report, by_status, counts, run, started)
    if gate is not None:
        summary["review"] = gate.totals()
    summary["warnings"] = warnings
    stage_bytes(ctx.out, "summary.json", json.dumps(summary, indent=2).encode())
    stage_bytes(ctx.out, "report.html", report.html(summary).encode())
    commit(ctx.out, shards=new_shards)  # shards, clips.jsonl, summary, report and indexes change together
    summary["report_markdown"] = report.markdown(summary)
    return summary


def add_rejected_examples(ctx: BuildContext, clip_id: str, report: RunReport) -> None:
    """Example crops of the clip's rejected windows for the report (read from .work/rejected, bounded)."""
    tar, log = ctx.rejected_tar(clip_id), ctx.rejected_log(clip_id)
    if not tar.exists() or not log.exists():
        return
    records = {r["key"]: r for line in log.read_text().splitlines() if (r := json.loads(line))["sample"]}
    for sample in read_samples(tar):
        if (record := records.get(sample["__key__"])) is not None and "jpg" in sample:
            report.add_rejected_window(record, sample["jpg"])


def _pack_unless_unchanged(
    ctx: BuildContext,
    packed: Callable[[], Iterable[tuple[Path, str]]],
    report: RunReport,
    gate: KeepGate | None,
    labels: dict[str, int] | None = None,
    by_split: dict[str, dict[str, int]] | None = None,
    repack: bool = False,
) -> tuple[dict, bool]:
    """Pack the shards, unless the inputs of the last packing (the same clip tars, splits, shard settings and
    review decisions) are unchanged and its shards are still in place: then they already are what packing
    would write. What packing observed (report data, review outcomes) is kept with the record. Otherwise only
    the shards whose clips changed are written (all of them with `repack`). Returns (counts, whether new shards
    were staged in OUT/shards.partial); everything written is staged for the commit."""
    digest = hashlib.sha1(repr((PIPELINE_VERSION, dataclasses.asdict(ctx.cfg.shards))).encode())
    for tar, split in packed():
        for path in (tar, sidecar_path(tar)):  # a new sidecar (features) changes the shards too
            st = path.stat() if path.exists() else None
            digest.update(f"{path.name}|{split}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    if gate is not None:
        digest.update(gate.fingerprint().encode())
    cae = CaeIndex() if ctx.cfg.extras.cae_index or (ctx.out / CAE_INDEX_FILE).exists() else None
    digest.update(f"leakage {ctx.cfg.filters.leakage_distance}\n".encode())
    if labels is not None or cae is not None:
        digest.update(json.dumps([labels, by_split, cae is not None], sort_keys=True).encode())
    record = ctx.work / "pack.json"
    if record.exists() and not repack:
        last = json.loads(record.read_text())
        expected = {f"{split}-{i:06d}.tar" for split, c in last["counts"].items() for i in range(c["shards"])}
        present = {p.name for p in (ctx.out / SHARD_DIR).glob("*.tar")}
        if last["fingerprint"] == digest.hexdigest() and present == expected:
            clean_interrupted(ctx.out)
            report.restore_sample_state(last["report"])
            if gate is not None:
                gate.outcomes = {k: Counter(v) for k, v in last["review_outcomes"].items()}
            return last["counts"], False

    def observe(meta: dict, sample: dict) -> None:
        report.add_sample(meta, sample["jpg"])
        report.add_embedding(meta, sample.get("dlib.npy"))

    def annotate(meta: dict) -> None:
        meta["identity_label"] = labels[meta["identity"]]
        meta["split_label"] = by_split[meta["split"]][meta["identity"]]

    clip_gate = getattr(gate, "clip_fingerprint", None)

    def fingerprint(tar: Path, split: str) -> str:
        """What a clip's samples in the shards depend on, besides the layout: equal ones pack the same bytes."""
        parts = [split]
        for path in (tar, sidecar_path(tar)):
            st = path.stat() if path.exists() else None
            parts.append(f"{st and st.st_size}:{st and st.st_mtime_ns}")
        if gate is not None:
            parts.append(clip_gate(tar.stem) if clip_gate is not None else gate.fingerprint())
        if labels is not None:
            identity = _identity_of(tar)
            parts.append(f"{labels.get(identity)}:{by_split.get(split, {}).get(identity)}")
        return "|".join(parts)

    layout = {"version": PIPELINE_VERSION, "shards": dataclasses.asdict(ctx.cfg.shards), "labels": labels is not None}
    layout["gate"] = None if gate is None else [type(gate).__name__, getattr(gate, "include_unreviewed", None)]
    placed = cae.add if cae is not None else None
    extra = gate.extra if gate is not None else None
    counts = pack_shards(
        ctx.out,
        packed(),
        ctx.cfg.shards,
        keep=gate,
        observe=observe,
        annotate=annotate if labels else None,
        placed=placed,
        extra=extra,
        swap=False,
        fingerprint=fingerprint,
        layout=json.dumps(layout, sort_keys=True),
        full=repack,
    )
    if cae is not None:
        stage_bytes(ctx.out, CAE_INDEX_FILE, cae.to_bytes())
    report.check_leakage(ctx.cfg.filters.leakage_distance)
    state = {"fingerprint": digest.hexdigest(), "counts": counts, "report": report.sample_state()}
    state["review_outcomes"] = gate.outcomes if gate is not None else {}
    stage_bytes(ctx.out, os.path.relpath(record, ctx.out), json.dumps(state).encode())
    return counts, True


def _identity_of(tar: Path) -> str | None:
    """A clip's identity, from its status record next to its tar."""
    path = tar.with_suffix(".json")
    return json.loads(path.read_text()).get("identity") if path.exists() else None


def _public_row(s: ClipStatus) -> dict:
    """The contract's fields first, then the extras."""
    d = s.to_dict()
    head = {k: d.pop(k) for k in ("id", "status", "reason", "detail", "windows_written")}
    d.pop("cache_key", None)
    if d.get("review") is None:
        d.pop("review", None)
    return {**head, **d}


def summarise(
    ctx: BuildContext, report: RunReport, by_status: Counter, counts: dict, run: dict, started: float
) -> dict:
    identities_per_split = Counter(v[0] for v in report.identities.values() if v[2] > 0)
    return {
        "manifest_rows": sum(by_status.values()),
        "clips_ok": by_status.get("ok", 0),
        "clips_rejected": by_status.get("rejected", 0),
        "clips_failed": by_status.get("failed", 0),
        **run,
        "reasons": dict(report.reasons.most_common()),
        "window_rejections": dict(report.window_reasons.most_common()),
        "window_flags": dict(report.window_flags.most_common()),
        "funnel": dict(report.funnel_rows()),
        "samples": sum(c["samples"] for c in counts.values()),
        "shards": {split: c["shards"] for split, c in sorted(counts.items())},
        "samples_per_split": {split: c["samples"] for split, c in sorted(counts.items())},
        "identities_per_split": dict(sorted(identities_per_split.items())),
        "seconds": round(time.time() - started, 2),
        "shard_dir": str(ctx.out / SHARD_DIR),
        "leakage": report.leakage,
    }


def format_summary(summary: dict) -> str:
    reasons = ", ".join(f"{k}={v}" for k, v in summary["reasons"].items()) or "none"
    windows = ", ".join(f"{k}={v}" for k, v in summary["window_rejections"].items()) or "none"
    flags = ", ".join(f"{k}={v}" for k, v in summary.get("window_flags", {}).items()) or "none"
    shards = ", ".join(f"{k}={v}" for k, v in summary["shards"].items()) or "none"
    s = summary
    review = ""
    if r := s.get("review"):
        review = (
            f"review: {r['queued']} windows queued, {r['accepted']} accepted, {r['rejected']} rejected, "
            f"{r['unreviewed_excluded']} held back until reviewed\n"
        )
    runs = (
        f" ({s['clips_new']} new, {s['clips_cached']} cached, {s['clips_redone']} redone)" if "clips_new" in s else ""
    )
    return (
        f"clips: {s['clips_ok']} ok, {s['clips_rejected']} rejected, {s['clips_failed']} failed "
        f"of {s['manifest_rows']} rows{runs}\n"
        f"clip reasons: {reasons}\n"
        f"window rejections: {windows}\n"
        f"windows flagged (kept): {flags}\n"
        f"samples: {summary['samples']} in shards {shards}\n"
        f"{review}"
        f"seconds: {summary['seconds']}"
    )


def build_failure(summary: dict, n_clips: int) -> str | None:
    """Why a finished build counts as failed (its Prefect run ends Failed, the command exits 1), or None.

    A bug in any clip (internal_error) fails it, and so does a build in which every clip failed (nothing could
    be obtained: a wrong mirror, no network). Rejections are the data doing its job and never fail a build."""
    reasons = summary.get("reasons", {})
    bugs = reasons.get("internal_error", 0)
    if bugs:
        return f"{bugs} clip(s) hit a bug (internal_error; details in clips.jsonl and the task logs)"
    failed = summary.get("clips_failed", 0)
    if n_clips > 0 and failed == n_clips:
        top = ", ".join(f"{r}={n}" for r, n in reasons.items() if r not in ("bad_row", "duplicate_id", "opted_out"))
        return f"every clip failed ({failed} of {n_clips}: {top})"
    return None
