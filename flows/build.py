"""The build flow: manifest → one task per clip on a bounded pool → clips.jsonl + shards + summary."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.build import BuildPlan, finish_build, format_summary, plan_build
from pipeline.clip import BuildContext, run_clip
from pipeline.config import VGGFaceConfig, load_config
from pipeline.records import Clip, ClipStatus


@task(name="clip", cache_policy=NO_CACHE)
def clip_task(clip: Clip, ctx: BuildContext) -> ClipStatus:
    # run_clip records every clip failure as a status row; anything raised here is a real crash
    return run_clip(clip, ctx)


VGGFACE_TARS_PER_TASK = 512


@task(name="vggface", cache_policy=NO_CACHE)
def vggface_task(tars: list[Path], cfg: VGGFaceConfig, weights: str):
    from pipeline.vggface import add_vggface, get_extractor

    # Flows sharing a GPU queue on the server's "gpu" concurrency limit (`prefect gcl create gpu --limit 1`);
    # where there is none, Prefect logs that it does not exist and the task runs at once.
    with concurrency("gpu", occupy=1):
        extractor = get_extractor(cfg, weights)
        print(extractor.describe())
        return add_vggface(tars, extractor)


def vggface_weights(cfg: VGGFaceConfig) -> str | None:
    """The VGG-Face weights file (checked before any clip work), or None after saying once that the stage is off."""
    from pipeline.vggface import STAGE_OFF, resolve_weights

    weights = resolve_weights(cfg)
    if weights is None:
        print(STAGE_OFF)
    return weights


def vggface_stage(plan: BuildPlan, done: dict[str, ClipStatus], weights: str) -> None:
    """VGG-Face features into every finished clip tar, before the shards are packed from them."""
    statuses = {**plan.cached, **done}
    tars = [plan.ctx.clip_tar(c.clip_id) for c in plan.manifest.clips if statuses[c.clip_id].status == "ok"]
    for lo in range(0, len(tars), VGGFACE_TARS_PER_TASK):
        print(vggface_task(tars[lo : lo + VGGFACE_TARS_PER_TASK], plan.ctx.cfg.vggface, weights))


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
    vgg_weights = vggface_weights(cfg.vggface)
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
    if vgg_weights is not None:
        vggface_stage(plan, done, vgg_weights)
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
