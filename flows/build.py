"""The build flow: manifest → one task per batch of clips on a bounded pool (threads, or Dask workers) →
clips.jsonl, shards, summary.json, report.html, and Prefect artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import interrupt
from pipeline.batch import BATCH_CLIPS, BATCH_SECONDS, BatchCrashed, BatchResult, batch_size, batches, run_batch
from pipeline.build import (
    BuildPlan,
    build_failure,
    describe_plan,
    finish_build,
    format_summary,
    output_paths,
    plan_build,
)
from pipeline.clip import BuildContext, read_status, record_crash
from pipeline.config import DownloadConfig, VGGFaceConfig, load_config
from pipeline.lock import holds_out_lock
from pipeline.progress import Progress, eta_text
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
        import dask

        logging.getLogger("distributed").setLevel(logging.WARNING)  # scheduler/nanny chatter in the flow's log
        # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then keeps its mmap threshold at
        # 128 KiB, so every decoded frame (MBs) is a fresh mmap, page faults and munmap. On the real clips that
        # made run_clip 10-18 % slower in a worker than in the build's own process; None leaves it unset
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
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


@dataclass
class BatchesOutcome:
    """What all the batches of a run did: finished clips, clips that crashed on a bug, clips abandoned or not
    started because the run is stopping, and the disk-full message when that is why."""

    clips: int = 0
    crashed: int = 0
    abandoned: int = 0
    disk_full: str | None = None


def _worker_ready() -> int:
    """Run on each Dask worker before the clips: unpickling it imports this module, and so the clip pipeline
    (what the worker's first batch would otherwise do)."""
    return os.getpid()


def start_dask_workers() -> None:
    """With a Dask runner, start the cluster (prefect-dask starts it on the first task) and have every worker
    import the clip pipeline now: the clip work then starts on ready workers, and a worker that cannot import
    the pipeline (another environment on another machine) fails the build here, before any clip."""
    from prefect.context import FlowRunContext

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    if type(runner).__name__ != "DaskTaskRunner":
        return
    ready = runner.client.run(_worker_ready)
    print(f"Dask: {len(ready)} worker(s) ready: {', '.join(sorted(ready))}")


def run_batches(plan: BuildPlan, workers: int, batch_clips: int, batch_seconds: float) -> BatchesOutcome:
    """Run the plan's clips as batch tasks, at most 2 per worker in flight (memory stays flat however long the
    manifest), printing one progress line a batch, with the build's ETA. After Ctrl-C, SIGTERM or a full disk no
    new batch starts, and the batches in flight give up their remaining clips."""
    logger = get_run_logger()
    total = len(plan.todo)
    size = batch_size(total, workers, batch_clips)
    pending = batches(plan.todo, size, batch_seconds)
    in_flight: dict = {}  # future -> (batch, submitted at)
    outcome = BatchesOutcome()
    progress = Progress(total, "clips", bar=False)  # the ETA of each line (Prefect's logger prints them)
    n = 0
    while True:
        while (
            len(in_flight) < 2 * max(1, workers)
            and not interrupt.stopping.is_set()
            and (batch := next(pending, None)) is not None
        ):
            in_flight[batch_task.submit(batch, plan.ctx)] = (batch, time.time())
        if not in_flight:
            return outcome
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
        plan.store.set_statuses(result.records)
        outcome.crashed += len(result.crashes)
        outcome.clips += result.clips
        outcome.abandoned += result.abandoned
        outcome.disk_full = outcome.disk_full or result.disk_full
        progress.advance(result.clips)
        n += 1
        print(f"[{outcome.clips}/{total}] batch {n}: {result.line()}, {eta_text(progress.eta())}")


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
    interrupt.take_signals()  # over the SIGTERM handler Prefect's engine has just installed
    cfg = load_config(config, preset)
    vgg_weights = vggface_weights(cfg.vggface)
    plan = plan_build(manifest, out, cfg, mirror=mirror, optout_files=optout, repack=repack)
    print("\n".join(describe_plan(plan, manifest)))
    if plan.todo.any_youtube():
        ensure_youtube_limit(cfg.download)

    start_dask_workers()
    clips_started = time.perf_counter()
    outcome = run_batches(plan, workers, batch_clips, batch_seconds)
    plan.clips_seconds = round(time.perf_counter() - clips_started, 3)
    done = outcome.clips
    if outcome.disk_full is not None:
        return Failed(message=outcome.disk_full, data={"disk_full": outcome.disk_full, "clips_done": done})
    if interrupt.stopping.is_set():
        total = len(plan.todo)
        message = (
            f"interrupted: {done} of {total} clips finished, {outcome.abandoned} abandoned, "
            f"{total - done - outcome.abandoned} not started; the shards were left as they were. Run the same "
            "command again to resume."
        )
        return Cancelled(message=message, data={"interrupted": message, "clips_done": done})
    if vgg_weights is not None:
        vggface_stage(plan, vgg_weights)
    try:
        summary = finish_build(plan, prepare_review)
    except OSError as err:  # packing ran out of space: the old outputs stand (pipeline/commit.py)
        if err.errno not in interrupt.DISK_FULL_ERRNOS:
            raise
        message = interrupt.disk_full_message(err)
        return Failed(message=message, data={"disk_full": message, "clips_done": done})
    summary["clips_crashed"] = crashed = outcome.crashed
    failure = summary["failed_because"] = build_failure(summary, plan.n_clips)
    markdown = summary.pop("report_markdown")
    counts = status_counts(summary)
    verdict = f"**Failed: {failure}**" if failure else "Completed"
    head = f"{verdict}\n\n" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "\n\n"
    create_markdown_artifact(markdown=head + markdown, key="build-summary", description="voiceface build funnel")
    create_table_artifact(
        table=[{"status": k, "clips": v} for k, v in counts.items()],
        key="build-status",
        description="manifest rows by status; internal_error = clips that hit a bug",
    )
    create_table_artifact(
        table=[{"reason": r, "clips": n} for r, n in summary["reasons"].items()] or [{"reason": "none", "clips": 0}],
        key="build-rejections",
        description="clips rejected or failed, by reason",
    )
    print("\n" + format_summary(summary))
    if crashed:
        logger.error("%d clip(s) crashed on a bug (reason internal_error in clips.jsonl)", crashed)
    print(output_paths(out))
    if failure:
        return Failed(message=failure, data=summary)  # red in the UI; the summary is still the run's result
    return summary


def status_counts(summary: dict) -> dict[str, int]:
    """Manifest rows by status, and the failures that were bugs."""
    return {
        "rows": summary["manifest_rows"],
        "ok": summary["clips_ok"],
        "rejected": summary["clips_rejected"],
        "failed": summary["clips_failed"],
        "internal_error": summary["reasons"].get("internal_error", 0),
    }


def result_of(state) -> dict:
    """A build flow run's summary, whether it ended Completed, Failed or Cancelled (interrupted); an exception it
    raised is raised."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


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
    interrupt.stopping.clear()
    with interrupt.graceful_stop(), shared_prefect_api():
        state = flow_with_pool(
            manifest=str(manifest),
            out=str(out),
            mirror=str(mirror) if mirror else None,
            config=str(config) if config else None,
            optout=[str(o) for o in optout] if optout else None,
            workers=workers,
            preset=preset,
            wait_for_out=wait_for_out,
            return_state=True,
            batch_clips=batch_clips,
            batch_seconds=batch_seconds,
            repack=repack,
        )
    summary = result_of(state)
    summary["state"] = state.type.value  # COMPLETED or FAILED, as the Prefect UI shows the run
    return summary


@contextlib.contextmanager
def shared_prefect_api():
    """With no PREFECT_API_URL, start Prefect's temporary server here rather than let the flow start it: with
    SIGINT blocked, so a Ctrl-C at the terminal (sent to the whole process group) stops the build gracefully
    instead of killing the server under it; and hand its URL to Dask worker processes through the environment
    (else each would start a server of its own, and task states and the "youtube" rate limit would not be
    shared)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        with interrupt.sigint_blocked():  # the child inherits the blocked signal mask
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
