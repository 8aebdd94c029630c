"""The build flow: manifest → one task per batch of clips on a bounded pool (threads, or Dask workers) →
clips.jsonl, shards, summary.json, report.html, and Prefect artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.batch import BATCH_CLIPS, BATCH_SECONDS, BatchCrashed, BatchResult, batch_size, batches, run_batch
from pipeline.build import BuildPlan, describe_plan, finish_build, format_summary, output_paths, plan_build
from pipeline.clip import BuildContext, read_status, record_crash
from pipeline.config import DownloadConfig, VGGFaceConfig, load_config
from pipeline.lock import holds_out_lock
from pipeline.records import Clip
from pipeline.review.queue import prepare_review

RUNNERS = ("thread", "dask")
YOUTUBE_LIMIT = "youtube"


def youtube_gate() -> None:
    """Wait for a slot of the global rate limit "youtube" (shared by every worker through the Prefect server)."""
    from prefect.concurrency.sync import rate_limit

    rate_limit(YOUTUBE_LIMIT, occupy=1, strict=False)


def ensure_youtube_limit(cfg: DownloadConfig) -> None:
    """Create the "youtube" rate limit from the config if the server has none (an existing one is left as is,
    so operators can tune it on a shared server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(YOUTUBE_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(
                    name=YOUTUBE_LIMIT, limit=max(1, cfg.youtube_burst), slot_decay_per_second=cfg.youtube_rate_per_s
                )
            )


@task(name="clips", cache_policy=NO_CACHE)
def batch_task(clips: list[Clip], ctx: BuildContext) -> BatchResult:
    # bad input comes back as statuses; a clip that hits a bug is recorded, and this task run then fails (UI)
    result = run_batch(clips, ctx, download_gate=youtube_gate)
    if result.crashes:
        raise BatchCrashed(result)
    return result


def make_task_runner(runner: str, workers: int, address: str | None = None):
    """A bounded pool: `workers` threads, or a Dask LocalCluster of `workers` single-threaded processes,
    or the existing Dask cluster at `address`."""
    if runner == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        logging.getLogger("distributed").setLevel(logging.WARNING)  # scheduler/nanny chatter in the flow's log
        cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "silence_logs": logging.WARNING}
        return DaskTaskRunner(cluster_kwargs=cluster)
    raise ValueError(f"runner must be one of {RUNNERS}, not {runner!r}")


VGGFACE_TARS_PER_TASK = 512


@task(name="vggface", cache_policy=NO_CACHE)
def vggface_task(tars: list[Path], cfg: VGGFaceConfig, weights: str):
    from pipeline.models.vggface import add_vggface, get_extractor

    # Flows sharing a GPU queue on the server's "gpu" concurrency limit (`prefect gcl create gpu --limit 1`);
    # where there is none, Prefect logs that it does not exist and the task runs at once.
    with concurrency("gpu", occupy=1):
        extractor = get_extractor(cfg, weights)
        print(extractor.describe())
        return add_vggface(tars, extractor)


def vggface_weights(cfg: VGGFaceConfig) -> str | None:
    """The VGG-Face weights file (checked before any clip work), or None after saying once that the stage is off."""
    from pipeline.models.vggface import STAGE_OFF, resolve_weights

    weights = resolve_weights(cfg)
    if weights is None:
        print(STAGE_OFF)
    return weights


def vggface_stage(plan: BuildPlan, weights: str) -> None:
    """VGG-Face features into every finished clip tar, before the shards are packed from them (tars that have
    them already, with the same settings, are left as they are)."""
    tars = []
    for c in plan.clips():
        status = read_status(plan.ctx, c.clip_id)
        if status is not None and status.status == "ok":
            tars.append(plan.ctx.clip_tar(c.clip_id))
        if len(tars) == VGGFACE_TARS_PER_TASK:
            print(vggface_task(tars, plan.ctx.cfg.vggface, weights))
            tars = []
    if tars:
        print(vggface_task(tars, plan.ctx.cfg.vggface, weights))


def run_batches(plan: BuildPlan, workers: int, batch_clips: int, batch_seconds: float) -> int:
    """Run the plan's clips as batch tasks, at most 2 per worker in flight (memory stays flat however long the
    manifest), printing one progress line a batch. Returns how many clips crashed on a bug."""
    logger = get_run_logger()
    total = len(plan.todo)
    size = batch_size(total, workers, batch_clips)
    pending = batches(plan.todo, size, batch_seconds)
    in_flight: dict = {}  # future -> (batch, submitted at)
    done = crashed = n = 0
    while True:
        while len(in_flight) < 2 * max(1, workers) and (batch := next(pending, None)) is not None:
            in_flight[batch_task.submit(batch, plan.ctx)] = (batch, time.time())
        if not in_flight:
            return crashed
        fut = next(as_completed(list(in_flight)))
        batch, submitted = in_flight.pop(fut)
        try:
            result = fut.result()
        except BatchCrashed as exc:  # its clips are recorded; the crashed ones as failed / internal_error
            result = exc.result
            for clip_id, tb in result.crashes:
                logger.error("clip %s crashed:\n%s", clip_id, tb)
        except Exception as exc:  # the batch itself died (a worker lost): its unfinished clips are crashes
            logger.error("batch of %d clips (from %s) failed: %r", len(batch), batch[0].clip_id, exc)
            result = BatchResult(clips=len(batch))
            for clip in batch:
                path = plan.ctx.clip_status_path(clip.clip_id)
                if not path.exists() or path.stat().st_mtime < submitted:
                    result.crashes.append((clip.clip_id, repr(exc)))
                    record_crash(clip, plan.ctx, exc)
                status = read_status(plan.ctx, clip.clip_id)
                result.statuses[status.status] += 1
                if status.reason:
                    result.reasons[status.reason] += 1
        crashed += len(result.crashes)
        done += result.clips
        n += 1
        print(f"[{done}/{total}] batch {n}: {result.line()}")


# bounded by default too (Prefect's own default pool is not): deployments and subflow calls get this one
@flow(name="build-shards", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
@holds_out_lock("voiceface build")
def build_shards(
    manifest: str,
    out: str,
    mirror: str | None = None,
    config: str | None = None,
    optout: list[str] | None = None,
    workers: int = 2,
    preset: str | None = None,
    wait_for_out: bool = False,
    batch_clips: int = BATCH_CLIPS,
    batch_seconds: float = BATCH_SECONDS,
    repack: bool = False,
) -> dict:
    """Build WebDataset shards in OUT from a manifest. Re-running with the same arguments finishes an
    interrupted build and redoes only what is missing or out of date. Another run on the same OUT makes this
    one stop at once, naming it (or wait for it, with `wait_for_out`)."""
    logger = get_run_logger()
    cfg = load_config(config, preset)
    vgg_weights = vggface_weights(cfg.vggface)
    plan = plan_build(manifest, out, cfg, mirror=mirror, optout_files=optout, repack=repack)
    print("\n".join(describe_plan(plan, manifest)))
    if plan.todo.any_youtube():
        ensure_youtube_limit(cfg.download)

    crashed = run_batches(plan, workers, batch_clips, batch_seconds)
    if vgg_weights is not None:
        vggface_stage(plan, vgg_weights)
    summary = finish_build(plan, prepare_review)
    summary["clips_crashed"] = crashed
    markdown = summary.pop("report_markdown")
    create_markdown_artifact(markdown=markdown, key="build-summary", description="voiceface build funnel")
    create_table_artifact(
        table=[{"reason": r, "clips": n} for r, n in summary["reasons"].items()] or [{"reason": "none", "clips": 0}],
        key="build-rejections",
        description="clips rejected or failed, by reason",
    )
    print("\n" + format_summary(summary))
    if crashed:
        logger.error("%d clip(s) crashed on a bug (reason internal_error in clips.jsonl)", crashed)
    print(output_paths(out))
    return summary


def run_build(
    manifest,
    out,
    mirror=None,
    config=None,
    optout=None,
    workers: int = 2,
    runner: str = "thread",
    address: str | None = None,
    preset: str | None = None,
    wait_for_out: bool = False,
    batch_clips: int = BATCH_CLIPS,
    batch_seconds: float = BATCH_SECONDS,
    repack: bool = False,
) -> dict:
    """Run the build flow on a bounded pool (Prefect's default thread pool is unbounded)."""
    workers = max(1, int(workers))
    flow_with_pool = build_shards.with_options(task_runner=make_task_runner(runner, workers, address))
    with shared_prefect_api() if runner == "dask" else contextlib.nullcontext():
        return flow_with_pool(
            manifest=str(manifest),
            out=str(out),
            mirror=str(mirror) if mirror else None,
            config=str(config) if config else None,
            optout=[str(o) for o in optout] if optout else None,
            workers=workers,
            preset=preset,
            wait_for_out=wait_for_out,
            batch_clips=batch_clips,
            batch_seconds=batch_seconds,
            repack=repack,
        )


@contextlib.contextmanager
def shared_prefect_api():
    """Make Dask worker processes report to the flow's Prefect API. With no PREFECT_API_URL, each process
    would start a temporary server of its own, and task states and the "youtube" rate limit would not be
    shared; so start the temporary server here and hand its URL to the workers through the environment."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()  # stopped at exit (Prefect registers that), after the last logs are sent
        url = server.api_url
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # inherited by the LocalCluster's worker processes
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
