"""The curate flow: fill the review queue, wait (paused) until a reviewer marks the batch done, then publish.

The batch is marked done from the review page (its button resumes the paused run through the Prefect API,
with the run id and API address the flow left in the review database) or from the Prefect UI, whose resume
form asks for the `ReviewDone` fields.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from uuid import UUID

from prefect import flow, pause_flow_run, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput

from pipeline.build import format_summary
from pipeline.config import Config, load_config
from pipeline.review.publish import publish
from pipeline.review.queue import open_db, queue_out

RUN_KEY, API_KEY = "curate_flow_run", "curate_api_url"


class ReviewDone(RunInput):
    reviewer: str = "anonymous"
    done: bool = True  # False: keep waiting (e.g. a reviewer resumed from the UI by mistake)


@task(name="queue", cache_policy=NO_CACHE)
def queue_task(out: str, cfg: Config, clips: list[str] | None, identities: list[str] | None, mirror: str | None):
    return queue_out(
        Path(out), cfg.review, clips, identities, reviewer="curate", mirror=Path(mirror) if mirror else None
    )


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(out: str, cfg: Config) -> dict:
    return publish(out, cfg)


@flow(name="curate", log_prints=True)
def curate(
    out: str,
    config: str | None = None,
    clips: list[str] | None = None,
    identities: list[str] | None = None,
    mirror: str | None = None,
    timeout_s: int = 7 * 24 * 3600,
    poll_interval_s: int = 5,
    review_url: str | None = None,
) -> dict:
    """Queue OUT's borderline windows (and these clips and identities), wait for the batch to be marked done,
    then rewrite the shards without the rejected windows."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    cfg = load_config(config)
    stats = queue_task(out, cfg, clips, identities, mirror)
    p = stats["progress"]
    print(
        f"{p['queued']} windows queued ({p['remaining']} to review; reasons {stats['reasons'] or 'none'}); "
        f"review them at {review_url or f'`voiceface review {out}`'} and mark the batch done"
    )
    db = open_db(Path(out))
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    db.set_meta(API_KEY, api_url)
    db.set_meta(RUN_KEY, str(flow_run.id))
    try:
        while True:
            answer = pause_flow_run(wait_for_input=ReviewDone, timeout=timeout_s, poll_interval=poll_interval_s)
            if answer.done:
                break
            print(f"{answer.reviewer} resumed without marking the batch done: waiting again")
    finally:
        db.set_meta(RUN_KEY, None)
        db.set_meta(API_KEY, None)
    print(f"batch marked done by {answer.reviewer}: publishing")
    summary = publish_task(out, cfg)
    print(format_summary(summary))
    return summary


def resume_waiting(out: str | Path, reviewer: str, wait_s: float = 10.0) -> str:
    """Resume the curate run waiting on OUT's batch, as `reviewer` (what the page's done button does)."""
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    db = open_db(Path(out))
    run_id, api_url = db.get_meta(RUN_KEY), db.get_meta(API_KEY)
    if run_id is None:
        raise LookupError("no curate run is waiting")
    answer = ReviewDone(reviewer=reviewer, done=True).model_dump()
    # the run may live on another Prefect server than this process's default (e.g. a temporary one)
    with temporary_settings(updates={PREFECT_API_URL: api_url}) if api_url else nullcontext():
        deadline = time.monotonic() + wait_s
        while True:
            try:
                resume_flow_run(UUID(run_id), run_input=answer)
                break
            except NotPausedError:  # the run records its id just before it pauses
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    return f"curate run {run_id} resumed by {reviewer}: it publishes the shards now"
