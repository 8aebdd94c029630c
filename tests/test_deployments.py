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


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{path.read_text()[-3000:]}"
        time.sleep(1)
    raise TimeoutError(f"{text!r} not in {path} after {timeout_s:.0f}s:\n{path.read_text()[-3000:]}")


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def serve_with_server(tmp_path, *args: str) -> tuple[subprocess.Popen, int, Path, dict]:
    """`voiceface serve --start-server` as `make serve` runs it, in a session of its own (like a terminal's
    foreground group); returns the process, the server's port, its log and the environment."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "serve.log"
    cmd = [str(Path(sys.executable).with_name("voiceface")), "serve", "--start-server", "--port", str(port), *args]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port, log, env


def assert_stops_cleanly(proc: subprocess.Popen, port: int, sig: int, log: Path) -> None:
    """`sig` to the whole process group (what Ctrl-C in a terminal does): the runner and the server it started
    both exit, status 0, within a minute, and the server's port is closed."""
    os.killpg(proc.pid, sig)
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running 90 s after signal {sig}:\n{log.read_text()[-3000:]}") from None
    assert rc == 0, log.read_text()[-3000:]
    deadline = time.time() + 30
    while port_is_open(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not port_is_open(port), "the Prefect server outlived `voiceface serve`"
    assert "Prefect server stopped" in log.read_text()


def test_a_scheduled_run_is_created_and_completes_and_ctrl_c_stops_serving(media, http_media, tmp_path):
    """The scheduler of a real `prefect server start` creates runs of the served refresh on its interval, and
    the runner executes one to Completed. (With SQLAlchemy 2.1 the scheduler failed every cycle and no run was
    ever created, while the deployment still listed its schedule.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    channels = tmp_path / "youtubers.csv"
    channels.write_text(f"name,gender,channel_url\nalice,female,{write_feed(media, http_media, 'feed3.xml')}\n")
    config = tmp_path / "no-review.yaml"
    config.write_text("review:\n  queue_on_build: false\n")
    out = tmp_path / "out"
    args = ["--channels", str(channels), "--out", str(out), "--interval", "30", "--per-channel", "1"]
    proc, port, log, env = serve_with_server(tmp_path, *args, "--config", str(config))
    try:
        wait_for_log(log, "trigger your deployments", proc)
        only_refresh = DeploymentFilter(name=DeploymentFilterName(any_=["nightly-refresh"]))
        runs, deadline = [], time.time() + 400
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            while time.time() < deadline:
                with get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(
                        deployment_filter=only_refresh, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=20
                    )
                if any(r.state is not None and r.state.is_final() for r in runs):
                    break
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(3)
        assert runs, f"the scheduler created no run:\n{log.read_text()[-3000:]}"
        assert all(r.auto_scheduled for r in runs)  # made by the scheduler, not triggered
        first = next(r for r in runs if r.state is not None and r.state.is_final())
        assert first.state.is_completed(), first.state
        rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rows] == ["ok"]
        assert list((out / "shards").glob("*.tar"))
        assert "InvalidRequestError" not in log.read_text()
        assert_stops_cleanly(proc, port, signal.SIGINT, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_with_its_own_server_stops_on_sigterm(tmp_path):
    proc, port, log, _ = serve_with_server(tmp_path, "--out", str(tmp_path / "out"))
    try:
        wait_for_log(log, "trigger your deployments", proc)
        assert port_is_open(port)
        assert_stops_cleanly(proc, port, signal.SIGTERM, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
