"""The build flow: manifest → one task per clip on a bounded pool (threads, or Dask workers) → clips.jsonl,
shards, summary.json, report.html, and Prefect artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import interrupt
from pipeline.build import (
    BuildPlan,
    build_failure,
    describe_plan,
    finish_build,
    format_summary,
    output_paths,
    plan_build,
)
from pipeline.clip import BuildContext, read_status, record_crash, run_clip
from pipeline.config import DownloadConfig, VGGFaceConfig, load_config
from pipeline.lock import holds_out_lock
from pipeline.progress import Progress, eta_text
from pipeline.records import Clip, ClipStatus
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


@task(name="clip", cache_policy=NO_CACHE)
def clip_task(clip: Clip, ctx: BuildContext) -> ClipStatus | None:
    # bad input comes back as a status; a bug raises, so this task run fails and shows in the UI; a clip abandoned
    # because the run is stopping comes back as None (no status: the next run redoes it)
    try:
        return run_clip(clip, ctx, download_gate=youtube_gate if clip.youtube_id else None)
    except interrupt.Interrupted:
        return None
    except interrupt.DiskFull as err:  # the run stops; said once, in one line, by the flow
        interrupt.stopping.set()
        return str(err.strerror)


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
    for c in plan.manifest.clips:
        status = read_status(plan.ctx, c.clip_id)
        if status is not None and status.status == "ok":
            tars.append(plan.ctx.clip_tar(c.clip_id))
    for lo in range(0, len(tars), VGGFACE_TARS_PER_TASK):
        print(vggface_task(tars[lo : lo + VGGFACE_TARS_PER_TASK], plan.ctx.cfg.vggface, weights))


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
) -> dict:
    """Build WebDataset shards in OUT from a manifest. Re-running with the same arguments finishes an
    interrupted build and redoes only what is missing or out of date. Another run on the same OUT makes this
    one stop at once, naming it (or wait for it, with `wait_for_out`)."""
    logger = get_run_logger()
    interrupt.take_signals()  # over the SIGTERM handler Prefect's engine has just installed
    cfg = load_config(config, preset)
    vgg_weights = vggface_weights(cfg.vggface)
    plan = plan_build(manifest, out, cfg, mirror=mirror, optout_files=optout)
    print("\n".join(describe_plan(plan, manifest)))
    if any(c.youtube_id for c in plan.todo):
        ensure_youtube_limit(cfg.download)

    total, done, crashed, abandoned = len(plan.todo), 0, 0, 0
    disk_full = None
    progress = Progress(total, "clips", bar=False)  # the ETA of each line (Prefect's logger prints them)
    # a bounded window of submitted futures keeps memory flat for long manifests
    window = max(1, workers) * 4
    for lo in range(0, total, window):
        if interrupt.stopping.is_set():  # Ctrl-C or SIGTERM: no new clips
            break
        batch = plan.todo[lo : lo + window]
        futures = {clip_task.submit(clip, plan.ctx): clip for clip in batch}
        for fut in as_completed(list(futures)):
            clip = futures[fut]
            try:
                status = fut.result()
            except Exception as exc:  # a bug in one clip: record it, say it loudly, finish the others
                crashed += 1
                logger.error("clip %s crashed:\n%s", clip.clip_id, "".join(traceback.format_exception(exc)))
                status = record_crash(clip, plan.ctx, exc)
            if isinstance(status, str):  # the disk is full: stop, say so, resume after space is freed
                disk_full = status
                status = None
            if status is None:  # abandoned by the stop: no status, the next run redoes it
                abandoned += 1
                continue
            done += 1
            note = f"{status.windows_written} windows" if status.status == "ok" else f"{status.reason}: {status.detail}"
            progress.advance()
            eta = eta_text(progress.eta())
            print(f"[{done}/{total}] {status.id} {status.status} ({note}) {status.seconds:.1f}s, {eta}")
        del futures, batch

    if disk_full is not None:
        return Failed(message=disk_full, data={"disk_full": disk_full, "clips_done": done})
    if interrupt.stopping.is_set():
        message = (
            f"interrupted: {done} of {total} clips finished, {abandoned} abandoned, {total - done - abandoned} not "
            "started; the shards were left as they were. Run the same command again to resume."
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
    summary["clips_crashed"] = crashed
    failure = summary["failed_because"] = build_failure(summary, len(plan.manifest.clips))
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
