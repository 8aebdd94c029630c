"""The build on a Dask cluster started as separate processes (`dask scheduler`, two `dask worker`s on 127.0.0.1)
sharing OUT through the filesystem, as on several machines: the same statuses and samples as the thread runner."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.build import run_build
from tests.test_build import read_shards

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def statuses(out):
    return {
        r["id"]: (r["status"], r["reason"], r["windows_written"]) for r in map(json.loads, open(out / "clips.jsonl"))
    }


@pytest.fixture
def cluster(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # workers report to the flow's server
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
             "--scheduler-file", scheduler_file], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nthreads", "1",
                     "--nworkers", "1", "--no-nanny", "--dashboard-address", ":0"],
                    env=env, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
            pids = set(client.run(os.getpid).values())
        yield address, pids
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a worker still closing its connections on a loaded machine
                p.kill()
                p.wait(timeout=30)


def test_build_on_a_separate_dask_cluster_matches_threads(cluster, media, tmp_path):
    address, worker_pids = cluster
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    manifest = tmp_path / "m.csv"
    rows = [f"{media.moving},a,alice,,", f"{media.coffee},c,carol,,", "missing/x.mp4,x,xavier,,"]
    rows += [f"{media.moving},a{i},alice{i},{i},{i + 3}" for i in range(1, 4)]
    manifest.write_text("source,id,identity,start,end\n" + "\n".join(rows) + "\n")
    thread_out, dask_out = tmp_path / "thread", tmp_path / "dask"
    run_build(manifest, thread_out, workers=2, batch_clips=2)
    summary = run_build(manifest, dask_out, workers=2, runner="dask", address=address, batch_clips=2)
    assert summary["clips_processed"] == 6 and summary["clips_crashed"] == 0
    assert statuses(dask_out) == statuses(thread_out)
    assert statuses(dask_out)["x"][:2] == ("failed", "file_not_found")
    keys = lambda out: sorted(s["__key__"] for s in read_shards(out))  # noqa: E731
    assert keys(dask_out) == keys(thread_out) and len(keys(dask_out)) > 5
