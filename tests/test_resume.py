"""Kill a real `voiceface build` mid-run, start it again with the same arguments: it completes, with no
truncated tar and no duplicate sample."""

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.test_build import read_shards

pytestmark = pytest.mark.slow
N_CLIPS = 6


def voiceface(*args) -> list[str]:
    return [str(Path(sys.executable).parent / "voiceface"), *args]


def test_killed_build_resumes_without_duplicates(media, tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f"{media.moving},clip{i},person{i % 3},,,," for i in range(N_CLIPS)]
    manifest.write_text("source,id,identity,start,end,x,y\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    cmd = voiceface("build", str(manifest), "--out", str(out), "--workers", "1")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    status_dir = out / ".work" / "clips"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(status_dir.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its ffmpeg children, mid-clip
    proc.wait()
    done_before = len(list(status_dir.glob("*.json")))
    assert 2 <= done_before < N_CLIPS, "the kill should land mid-run"
    # whatever a kill leaves is never a finished-looking tar: only complete ones carry the .tar name
    for tar in status_dir.glob("*.tar"):
        with tarfile.open(tar) as t:
            assert t.getmembers()
    # a kill during packing would leave a staging dir; plant one to check that it is cleaned up
    (out / "shards.partial").mkdir(parents=True, exist_ok=True)
    (out / "shards.partial" / "train-000000.tar").write_bytes(b"truncated")

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / "shards.partial").exists()
    assert not list(out.rglob("*.partial"))
    samples = read_shards(out)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))  # no duplicates
    assert {k.rsplit("-", 1)[0] for k in keys} == {f"clip{i}" for i in range(N_CLIPS)}
    per_clip = len(keys) // N_CLIPS
    assert per_clip >= 6 and len(keys) == per_clip * N_CLIPS  # every clip complete
    lines = (out / "clips.jsonl").read_text().splitlines()
    assert len(lines) == N_CLIPS
    # the clips finished before the kill were not redone
    assert f"{N_CLIPS - done_before} new, {done_before} cached, 0 to redo" in r.stdout + r.stderr
    # a third run has nothing to do: no Prefect server, no repacking, the same bytes
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "without starting Prefect" in r.stdout
    assert "temporary server" not in r.stdout + r.stderr
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before
    # a shard gone missing is noticed: the shards are packed again
    next(iter((out / "shards").glob("*.tar"))).unlink()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before
