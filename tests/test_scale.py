"""Orchestration: incremental re-runs, stage-aware redo, crashes, and the Dask runner matching the thread one."""

import hashlib
import io
import json
import os

import pytest
from PIL import Image

import pipeline.stages.decode
from flows.build import run_build
from tests.httpserver import RangeHandler
from tests.test_build import read_shards

pytestmark = pytest.mark.slow


def statuses(out):
    return {
        r["id"]: (r["status"], r["reason"], r["windows_written"]) for r in map(json.loads, open(out / "clips.jsonl"))
    }


def audio_digests(out):
    return {s["__key__"]: hashlib.sha1(s["wav"]).hexdigest() for s in read_shards(out)}


@pytest.fixture
def manifest(media, http_media, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "source,id,identity,start,end\n"
        f"{media.moving},a,alice,,\n"
        f"{http_media.url}/stereo48k.mp4,b,bob,1,4\n"
        f"{media.coffee},c,carol,,\n"
    )
    return path


def test_adding_a_row_processes_only_that_clip(manifest, media, prefect_harness, tmp_path):
    out = tmp_path / "out"
    first = run_build(manifest, out, workers=2)
    assert (first["clips_new"], first["clips_cached"]) == (3, 0)
    manifest.write_text(manifest.read_text() + f"{media.two_faces},d,dora,,\n")
    second = run_build(manifest, out, workers=2)
    assert (second["clips_new"], second["clips_cached"], second["clips_redone"]) == (1, 3, 0)
    assert statuses(out)["d"][0] == "ok" and second["samples"] > first["samples"]


def test_a_face_setting_change_redoes_clips_without_downloading_again(manifest, prefect_harness, tmp_path):
    out = tmp_path / "out"
    run_build(manifest, out, workers=2)
    fetched = RangeHandler.requests["/stereo48k.mp4"]
    assert fetched > 0
    config = tmp_path / "c.yaml"
    config.write_text("faces:\n  crop_size: 128\n")
    summary = run_build(manifest, out, config=config, workers=2)
    assert (summary["clips_redone"], summary["clips_cached"]) == (3, 0)
    assert RangeHandler.requests["/stereo48k.mp4"] == fetched  # the kept segment was decoded again, not fetched

    assert {Image.open(io.BytesIO(s["jpg"])).size for s in read_shards(out)} == {(128, 128)}
    # a shard-only setting repacks without media work
    config.write_text("faces:\n  crop_size: 128\nshards:\n  maxcount: 2\n")
    summary = run_build(manifest, out, config=config, workers=2)
    assert (summary["clips_cached"], summary["clips_redone"]) == (3, 0)
    assert summary["shards"] == {k: -(-n // 2) for k, n in summary["samples_per_split"].items()}


def test_a_crash_fails_its_task_and_the_run_finishes(manifest, prefect_harness, tmp_path, monkeypatch):
    real = pipeline.stages.decode.decode_audio

    def buggy(path, *a, **k):
        if "coffee" in str(path):
            raise KeyError("a bug")
        return real(path, *a, **k)

    monkeypatch.setattr(pipeline.stages.decode, "decode_audio", buggy)
    out = tmp_path / "out"
    summary = run_build(manifest, out, workers=2)
    assert summary["clips_crashed"] == 1
    got = statuses(out)
    assert got["c"][:2] == ("failed", "internal_error") and got["a"][0] == got["b"][0] == "ok"
    # a bug fails the run in Prefect (not a green Completed), and the counts are in its artifact
    assert summary["state"] == "FAILED" and "internal_error" in summary["failed_because"]
    run = last_build_run()
    assert run.state.is_failed() and "internal_error" in run.state.message
    assert status_artifact(run) == {"rows": 3, "ok": 2, "rejected": 0, "failed": 1, "internal_error": 1}
    monkeypatch.setattr(pipeline.stages.decode, "decode_audio", real)
    again = run_build(manifest, out, workers=2)  # the crashed clip is redone once the bug is gone
    assert (again["clips_redone"], again["clips_cached"]) == (1, 2)
    assert statuses(out)["c"][:2] == ("rejected", "no_face")
    assert again["state"] == "COMPLETED" and again["failed_because"] is None
    assert last_build_run().state.is_completed()


def last_build_run():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flows = FlowFilter(name=FlowFilterName(any_=["build-shards"]))
        return client.read_flow_runs(flow_filter=flows, sort=FlowRunSort.START_TIME_DESC, limit=1)[0]


def status_artifact(run) -> dict:
    """The run's `build-status` table artifact as {status: clips}, read from the server's REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["build-status"]}, "flow_run_id": {"any_": [str(run.id)]}}}
    r = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json={**body, "limit": 5, "offset": 0}, timeout=60)
    r.raise_for_status()
    (artifact,) = r.json()
    data = json.loads(artifact["data"]) if isinstance(artifact["data"], str) else artifact["data"]
    return {row["status"]: row["clips"] for row in data}


def test_a_build_whose_every_clip_failed_fails_but_rejections_alone_do_not(media, prefect_harness, tmp_path):
    gone = tmp_path / "gone.csv"
    gone.write_text("source,id\nfile:nowhere/a.mp4,a\nfile:nowhere/b.mp4,b\nnot-a-row,bad id!\n")
    summary = run_build(gone, tmp_path / "gone", workers=2)
    assert summary["state"] == "FAILED" and summary["failed_because"].startswith("every clip failed (2 of 2")
    run = last_build_run()
    assert run.state.is_failed() and "file_not_found=2" in run.state.message
    assert status_artifact(run) == {"rows": 3, "ok": 0, "rejected": 1, "failed": 2, "internal_error": 0}

    rejected = tmp_path / "rejected.csv"
    rejected.write_text(f"source,id\n{media.coffee},c\n{media.silence},s\nnot-a-row,bad id!\n")
    summary = run_build(rejected, tmp_path / "rejected", workers=2)
    assert (summary["clips_ok"], summary["clips_rejected"], summary["clips_failed"]) == (0, 3, 0)
    assert summary["state"] == "COMPLETED" and summary["failed_because"] is None
    assert last_build_run().state.is_completed()


def test_dask_runner_matches_thread_runner(manifest, prefect_harness, tmp_path):
    thread_out, dask_out = tmp_path / "thread", tmp_path / "dask"
    run_build(manifest, thread_out, workers=2, runner="thread")
    run_build(manifest, dask_out, workers=2, runner="dask")
    assert statuses(thread_out) == statuses(dask_out)
    thread_audio, dask_audio = audio_digests(thread_out), audio_digests(dask_out)
    assert thread_audio == dask_audio and len(thread_audio) > 5
    assert sorted(p.name for p in (dask_out / "shards").glob("*.tar")) == sorted(
        p.name for p in (thread_out / "shards").glob("*.tar")
    )


def test_youtube_rate_limit_is_created_from_the_config(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.build import ensure_youtube_limit, youtube_gate
    from pipeline.config import DownloadConfig

    with get_client(sync_client=True) as client:  # a build of YouTube ids earlier in the session made one
        try:
            client.delete_global_concurrency_limit_by_name("youtube")
        except ObjectNotFound:
            pass
    ensure_youtube_limit(DownloadConfig(youtube_rate_per_s=5.0, youtube_burst=3))
    ensure_youtube_limit(DownloadConfig(youtube_rate_per_s=1.0))  # an existing limit is left as the operator set it
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("youtube")
    assert (limit.limit, limit.slot_decay_per_second) == (3, 5.0)
    for _ in range(3):
        youtube_gate()  # takes a slot each time, without error


def test_dask_workers_start_without_dasks_malloc_trim_threshold():
    """Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_ set, which pins glibc's mmap threshold low: every
    decoded frame is then a fresh mmap (run_clip 10-18 % slower on the real clips). The build's cluster unsets it."""
    from distributed import Client, LocalCluster

    from flows.build import make_task_runner

    make_task_runner("dask", 1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert list(env.values()) == [(None, "1")]  # the other settings Dask gives its workers stay
