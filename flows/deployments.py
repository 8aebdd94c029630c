"""Scheduled deployments: a nightly refresh that expands a channel list into its newest videos and builds
shards from them, and an on-demand build. `voiceface serve` (make serve) serves both with their schedules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prefect import flow
from prefect.states import Failed

from flows.build import build_shards, make_task_runner, result_of
from pipeline.channels import expand_channels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHANNELS = ROOT / "manifests" / "youtubers.csv"
NIGHTLY_CRON = "0 3 * * *"  # 03:00 every night, in the serving machine's timezone (UTC by default)


@flow(name="refresh-channels", log_prints=True)
def refresh_channels(
    channels: str = str(DEFAULT_CHANNELS),
    out: str = "out/youtubers",
    per_channel: int = 20,
    segment_s: float | None = None,
    config: str | None = None,
    workers: int = 2,
) -> dict:
    """Add each channel's newest videos (not yet in OUT/archive.txt) to OUT/manifest.csv, then build OUT.
    Earlier videos are cached, so a nightly run only processes what is new."""
    manifest, archive = Path(out) / "manifest.csv", Path(out) / "archive.txt"
    added, problems = expand_channels(channels, manifest, archive, per_channel=per_channel, segment_s=segment_s)
    for p in problems:
        print(f"  channel list: {p}")
    print(f"{added} new video(s) from {channels}; manifest {manifest}")
    build = build_shards.with_options(task_runner=make_task_runner("thread", workers))
    state = build(manifest=str(manifest), out=out, config=config, workers=workers, return_state=True)
    result = {"added": added, **result_of(state)}
    return Failed(message=state.message, data=result) if state.is_failed() else result


def deployments(
    channels: str,
    out: str,
    cron: str | None,
    workers: int,
    interval_s: float | None = None,
    config: str | None = None,
    per_channel: int | None = None,
):
    """The deployments `voiceface serve` serves. The refresh runs on `cron`, or every `interval_s` seconds."""
    params: dict = {"channels": channels, "out": out, "workers": workers}
    if config:
        params["config"] = config
    if per_channel:
        params["per_channel"] = per_channel
    schedule = {"interval": interval_s} if interval_s else {"cron": cron or NIGHTLY_CRON}
    refresh = refresh_channels.to_deployment(
        name="nightly-refresh",
        **schedule,
        concurrency_limit=1,  # two refreshes never write one OUT at once: a late one waits for the other
        parameters=params,
        description="Newest videos of the channel list → manifest → shards, every night.",
    )
    build = build_shards.to_deployment(
        name="build",
        parameters={"workers": workers},
        description="Build shards from a manifest, on demand (parameters: manifest, out, mirror, config).",
    )
    return [refresh, build]


def wait_for_api(api_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no Prefect API at {api_url} after {timeout_s:.0f}s")


def start_local_server(
    host: str = "127.0.0.1", port: int = 4200, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """`prefect server start` (SQLite under PREFECT_HOME, UI at http://host:port); returns (process, API URL)."""
    api_url = f"http://{host}:{port}/api"
    env = {**(env or os.environ), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    # Its own session: a Ctrl-C in the terminal (SIGINT to the whole foreground group) reaches only the serving
    # process, which pauses its deployments through this server and then stops it. Killing the server at the
    # same moment left the runner retrying a dead API forever.
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", host, "--port", str(port)],
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        wait_for_api(api_url)
    except TimeoutError:
        stop_process(proc)
        raise
    return proc, api_url


def _die_with_parent() -> None:
    """In the server's process: SIGTERM when the process that started it dies (Linux), even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


SHUTDOWN_GRACE_S = 20.0  # how long Prefect's runner may take to wind down after Ctrl-C before serve leaves anyway


def _interrupt_with_deadline(server: subprocess.Popen | None):
    """A SIGINT handler: Prefect's runner winds down on KeyboardInterrupt, but a Ctrl-C that lands while it starts
    a flow run can leave it waiting; after SHUTDOWN_GRACE_S the server is stopped and the process leaves."""

    def handle(signum, frame):
        def leave():
            time.sleep(SHUTDOWN_GRACE_S)
            if server is not None:
                stop_process(server)
            print("Prefect server stopped (the runner did not wind down in time)", flush=True)
            os._exit(0)

        threading.Thread(target=leave, daemon=True).start()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    return handle


def serve_deployments(
    channels: str,
    out: str,
    cron: str | None,
    workers: int,
    start_server: bool,
    port: int,
    interval_s: float | None = None,
    config: str | None = None,
    per_channel: int | None = None,
) -> None:
    """Serve the deployments until Ctrl-C or SIGTERM, against PREFECT_API_URL or a local server started here.
    On either signal the runner pauses its schedules, then the local server (if any) is stopped."""
    from prefect import serve

    signal.signal(signal.SIGTERM, _interrupt)  # until the runner installs its own: the same way out as Ctrl-C
    server = None
    if start_server:
        server, api_url = start_local_server(port=port)
        os.environ["PREFECT_API_URL"] = api_url
        print(f"Prefect server: UI http://127.0.0.1:{port}, API {api_url}")
    elif not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("error: set PREFECT_API_URL to your Prefect server's API (or use --start-server / make serve)")
    signal.signal(signal.SIGINT, _interrupt_with_deadline(server))
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            serve(*deployments(channels, out, cron, workers, interval_s, config, per_channel))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how serving is meant to end
    finally:
        if server is not None:
            stop_process(server)
            print("Prefect server stopped")
