"""The build flow: manifest → one task per clip on a bounded pool → clips.jsonl + shards + summary."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.build import finish_build, format_summary, plan_build
from pipeline.clip import BuildContext, run_clip
from pipeline.config import load_config
from pipeline.records import Clip, ClipStatus


@task(name="clip", cache_policy=NO_CACHE)
def clip_task(clip: Clip, ctx: BuildContext) -> ClipStatus:
    # run_clip records every clip failure as a status row; anything raised here is a real crash
    return run_clip(clip, ctx)


@flow(name="build-shards", log_prints=True)
def build_shards(
    manifest: str,
    out: str,
    mirror: str | None = None,
    config: str | None = None,
    optout: list[str] | None = None,
    workers: int = 2,
) -> dict:
    """Build WebDataset shards in OUT from a manifest. Re-running with the same arguments finishes an
    interrupted build and redoes only what is missing."""
    cfg = load_config(config)
    plan = plan_build(manifest, out, cfg, mirror=mirror, optout_files=optout)
    m = plan.manifest
    print(
        f"manifest {manifest}: {m.n_rows} rows ({m.format}), {len(plan.todo)} clips to process, "
        f"{len(plan.cached)} already done, {len(m.rejected)} not processed"
    )
    for bad in m.rejected:
        print(f"  skipped {bad.id}: {bad.reason}: {bad.detail}")
    for warning in m.warnings:
        print(f"  warning: {warning}")
    done: dict[str, ClipStatus] = {}
    total = len(plan.todo)
    # a bounded window of submitted futures keeps memory flat for long manifests
    window = max(1, workers) * 8
    for lo in range(0, total, window):
        futures = [clip_task.submit(clip, plan.ctx) for clip in plan.todo[lo : lo + window]]
        for fut in as_completed(futures):
            status = fut.result()
            done[status.id] = status
            note = f"{status.windows_written} windows" if status.status == "ok" else f"{status.reason}: {status.detail}"
            print(f"[{len(done)}/{total}] {status.id} {status.status} ({note}) {status.seconds:.1f}s")
    summary = finish_build(plan, done)
    print("\n" + format_summary(summary))
    print(f"shards: {Path(out) / 'shards'}\nclips: {Path(out) / 'clips.jsonl'}\nreport: {Path(out) / 'summary.json'}")
    return summary


def run_build(manifest, out, mirror=None, config=None, optout=None, workers: int = 2) -> dict:
    """Run the build flow on a thread pool of `workers` (Prefect's default pool is unbounded)."""
    workers = max(1, int(workers))
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return build_shards.with_options(task_runner=runner)(
        manifest=str(manifest),
        out=str(out),
        mirror=str(mirror) if mirror else None,
        config=str(config) if config else None,
        optout=[str(o) for o in optout] if optout else None,
        workers=workers,
    )
