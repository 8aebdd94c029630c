"""A real `prefect server start`, `voiceface serve` serving the deployments, and a triggered nightly refresh
that lists a channel (an RSS feed over HTTP) with yt-dlp and builds shards from its newest videos."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.deployments import start_local_server
from pipeline.channels import expand_channels, read_archive, read_channels

pytestmark = pytest.mark.slow


def write_feed(media, http_media, name="feed.xml") -> str:
    items = "".join(
        f"<item><title>{v}</title><link>{http_media.url}/{v}.mp4</link><guid>{v}</guid></item>"
        for v in ("moving", "stereo48k", "two_faces")
    )
    (media.dir / name).write_text(
        f"<?xml version='1.0'?><rss version='2.0'><channel><title>A channel</title><link>{http_media.url}</link>"
        f"<description>d</description>{items}</channel></rss>"
    )
    return f"{http_media.url}/{name}"


def test_expand_channels_is_incremental(media, http_media, tmp_path):
    channels = tmp_path / "youtubers.csv"
    feed = write_feed(media, http_media)
    channels.write_text(f"name,gender,channel_url\nalice,female,{feed}\nbad,male,not-a-url\n")
    assert [c.name for c in read_channels(channels)[0]] == ["alice"]
    manifest, archive = tmp_path / "m.csv", tmp_path / "archive.txt"
    added, problems = expand_channels(channels, manifest, archive, per_channel=2, segment_s=3)
    assert added == 2 and len(problems) == 1 and "line 3" in problems[0]
    assert read_archive(archive) == {"generic moving", "generic stereo48k"}
    added, _ = expand_channels(channels, manifest, archive, per_channel=3)
    assert added == 1  # only the video not listed before
    rows = manifest.read_text().splitlines()
    assert rows[0] == "source,id,identity,gender,start,end" and len(rows) == 4
    assert rows[1].endswith(",alice,female,0,3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_deployments_have_schedules_and_a_triggered_run_completes(media, http_media, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server, api_url = start_local_server(port=free_port(), env=env)
    serve = None
    try:
        channels = tmp_path / "youtubers.csv"
        channels.write_text(f"name,gender,channel_url\nalice,female,{write_feed(media, http_media, 'feed2.xml')}\n")
        out = tmp_path / "out"
        serve = subprocess.Popen(
            [str(Path(sys.executable).with_name("voiceface")), "serve", "--channels", str(channels), "--out", str(out)],
            env={**env, "PREFECT_API_URL": api_url},
            start_new_session=True,
        )
        with temporary_settings({PREFECT_API_URL: api_url}):
            deployments = wait_for_deployments(["refresh-channels/nightly-refresh", "build-shards/build"])
            refresh = deployments["refresh-channels/nightly-refresh"]
            assert [s.schedule.cron for s in refresh.schedules] == ["0 3 * * *"]
            assert deployments["build-shards/build"].schedules == []
            # the feed's two videos show two different people: keep the identity-outlier review out of this test
            config = tmp_path / "no-review.yaml"
            config.write_text("review:\n  queue_on_build: false\n")
            params = {"per_channel": 2, "segment_s": 3, "config": str(config)}
            run = run_deployment("refresh-channels/nightly-refresh", parameters=params, timeout=300)
            assert run.state.is_completed(), run.state
        rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rows] == ["ok", "ok"]
        assert (out / "report.html").exists() and list((out / "shards").glob("*.tar"))
    finally:
        if serve is not None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)


def wait_for_deployments(names: list[str], timeout_s: float = 120):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with get_client(sync_client=True) as client:
                return {name: client.read_deployment_by_name(name) for name in names}
        except ObjectNotFound:
            time.sleep(1)
    raise TimeoutError(f"{names} were not registered")
