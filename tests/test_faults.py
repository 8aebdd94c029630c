"""Fault injection: a crash at each point of a build's output commit, two writers on one OUT, a killed pack.
Each test asserts the end state against a clean run: the same shards byte for byte, one status row per input,
outputs that agree with each other."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pipeline.commit
from pipeline.build import finish_build, plan_build
from pipeline.clip import run_clip
from pipeline.config import Config
from pipeline.lock import OutLocked, out_lock

pytestmark = pytest.mark.slow


def digest(out: Path) -> dict[str, str]:
    files = sorted((out / "shards").glob("*.tar")) + [out / "clips.jsonl"]
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def shard_digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


def untimed_rows(out: Path) -> list[dict]:
    """clips.jsonl without the seconds each clip took."""
    rows = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def summary_agrees(out: Path) -> None:
    """summary.json counts what shards/ and clips.jsonl hold."""
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    assert s["samples"] == sum(r["windows_written"] for r in rows)
    assert sum(s["shards"].values()) == len(list((out / "shards").glob("*.tar")))


def build(manifest: Path, out: Path, cfg: Config) -> dict:
    plan = plan_build(manifest, out, cfg)
    for c in plan.todo:
        run_clip(c, plan.ctx)
    return finish_build(plan)


@pytest.fixture(scope="module")
def two_builds(media, tmp_path_factory):
    """A finished OUT built with 2 samples a shard, and the clean result of repacking it with 3 a shard."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copy(media.moving, root / "moving.mp4")
    shutil.copy(media.stereo48k, root / "stereo48k.mp4")
    manifest = root / "manifest.csv"
    manifest.write_text("source,id,identity\nmoving.mp4,a1,alice\nstereo48k.mp4,g1,grace\n")
    first = Config.from_dict({"shards": {"maxcount": 2}})
    second = Config.from_dict({"shards": {"maxcount": 3}})
    before = root / "before"
    build(manifest, before, first)
    clean = root / "clean"
    shutil.copytree(before, clean)
    build(manifest, clean, second)
    assert digest(clean) != digest(before)
    return manifest, before, clean, second


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["staging", "decided"])
def test_a_crash_during_the_output_commit_never_leaves_mixed_outputs(two_builds, tmp_path, monkeypatch, where):
    manifest, before, clean, cfg = two_builds
    out = tmp_path / "out"
    shutil.copytree(before, out)
    if where == "staging":  # killed while the report is staged: the commit was never decided
        real = pipeline.commit.stage_bytes

        def stage(out_, rel, data):
            if rel == "report.html":
                raise Boom
            real(out_, rel, data)

        monkeypatch.setattr("pipeline.build.stage_bytes", stage)
    else:  # killed right after the commit was decided, before anything moved

        def carry_out(out_, marker):
            raise Boom

        monkeypatch.setattr(pipeline.commit, "_carry_out", carry_out)
    with pytest.raises(Boom):
        build(manifest, out, cfg)
    monkeypatch.undo()
    if where == "staging":
        assert digest(out) == digest(before)  # the old outputs, whole
    else:
        assert (out / "shards").is_dir() and digest(out) == digest(before)  # nothing moved yet
        assert (out / ".work" / "commit" / "COMMIT").exists()
    summary_agrees(out)
    # the next run (any command that plans or publishes) resolves it; then a build equals a clean one
    assert pipeline.commit.recover(out) is not None
    if where == "decided":
        assert digest(out) == digest(clean)  # the decided commit was finished
    summary_agrees(out)
    build(manifest, out, cfg)
    assert digest(out) == digest(clean)
    assert not (out / "shards.partial").exists() and not (out / ".work" / "commit").exists()


def test_the_shard_directory_is_swapped_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "x").write_text("old")
    pipeline.commit.exchange(a, b)
    assert (b / "x").read_text() == "new" and (a / "x").read_text() == "old"


def test_a_second_writer_is_told_who_holds_out(tmp_path, capsys):

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.lock import out_lock\n"
         "with out_lock(sys.argv[1], 'voiceface build'):\n print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutLocked, match=rf"pid {holder.pid} .*voiceface build"):
            with out_lock(out, "voiceface publish"):
                pass
        from flows.cli import main as cli

        (out / "clips.jsonl").write_text("")
        capsys.readouterr()
        assert cli(["publish", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by pid {holder.pid}" in err  # one line, no traceback
    finally:
        holder.kill()
        holder.wait()
    with out_lock(out, "voiceface publish"):  # a killed holder leaves no stale lock
        pass


# --- a killed ffmpeg child is a retryable failure, never a result -------------------------------------------------


def _clean_clip(media, tmp_path):
    from pipeline.clip import BuildContext
    from pipeline.records import Clip

    clip = Clip("m1", str(media.moving), "mia", 1)
    clean = BuildContext(tmp_path / "clean", Config())
    assert run_clip(clip, clean).status == "ok"
    return clip, hashlib.sha1(clean.clip_tar("m1").read_bytes()).hexdigest()


def test_killing_the_audio_decoder_is_a_retryable_failure(media, tmp_path, monkeypatch):

    import pipeline.media
    from pipeline.clip import BuildContext, cached_status

    clip, clean = _clean_clip(media, tmp_path)
    real_run = subprocess.run

    def run_and_kill(cmd, **kw):  # the audio decoder, killed as the OOM killer would
        if cmd[0] == "ffmpeg" and "pcm_s16le" in cmd:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        return real_run(cmd, **kw)

    monkeypatch.setattr(pipeline.media.subprocess, "run", run_and_kill)
    ctx = BuildContext(tmp_path / "out", Config())
    s = run_clip(clip, ctx)
    assert (s.status, s.reason) == ("failed", "decoder_killed") and "SIGKILL" in s.detail
    assert cached_status(clip, ctx) is None  # the next run redoes it
    monkeypatch.undo()
    assert run_clip(clip, ctx).status == "ok"
    assert hashlib.sha1(ctx.clip_tar("m1").read_bytes()).hexdigest() == clean


def test_killing_the_frame_decoder_mid_clip_is_a_retryable_failure(media, tmp_path, monkeypatch):

    import pipeline.media
    import pipeline.stages.faces
    from pipeline.clip import BuildContext, cached_status

    clip, clean = _clean_clip(media, tmp_path)
    real_popen = subprocess.Popen
    killed = []

    def popen_then_kill(cmd, *a, **kw):  # the frame decoder, killed half-way through the clip
        proc = real_popen(cmd, *a, **kw)
        if any("showinfo@grid" in str(c) for c in cmd):
            threading.Timer(0.6, lambda: (os.kill(proc.pid, signal.SIGKILL), killed.append(proc.pid))).start()
        return proc

    slow_call = pipeline.stages.faces.FaceStage.__call__

    def slow(self, frame):  # a slow consumer: ffmpeg waits on the full pipe, alive until it is killed
        time.sleep(0.3)
        return slow_call(self, frame)

    monkeypatch.setattr(pipeline.media.subprocess, "Popen", popen_then_kill)
    monkeypatch.setattr(pipeline.stages.faces.FaceStage, "__call__", slow)
    ctx = BuildContext(tmp_path / "out", Config())
    s = run_clip(clip, ctx)
    assert killed and (s.status, s.reason) == ("failed", "decoder_killed"), (s.status, s.reason, s.detail)
    assert not ctx.clip_tar("m1").exists()  # no partial clip recorded as a result
    assert cached_status(clip, ctx) is None
    monkeypatch.undo()
    assert run_clip(clip, ctx).status == "ok"
    assert hashlib.sha1(ctx.clip_tar("m1").read_bytes()).hexdigest() == clean


# --- hostile manifest rows: each becomes exactly one bad_row status, and the run goes on -------------------------


def test_every_bad_row_is_one_bad_row_status_and_the_good_row_still_runs(media, tmp_path):
    shutil.copy(media.moving, tmp_path / "moving.mp4")
    header = b"source,id,identity,start,end,x,y,split\n"
    rows = [
        b"moving.mp4,good1,mia,,,,,\n",  # line 2
        b"moving.mp4," + b"a" * 300 + b",mia,,,,,\n",  # 3: an id no filesystem can name
        b"moving.mp4,utf1,mi\xffa,,,,,\n",  # 4: a byte that is not UTF-8
        b"moving.mp4,long1," + b"x" * (200 << 10) + b",,,,,\n",  # 5: a 200 KiB field
        b"moving.mp4,neg1,mia,,-3,,,\n",  # 6: end=-3
        b"moving.mp4,huge1,mia,,1e300,,,\n",  # 7: end=1e300
        b"moving.mp4,short1\n",  # 8: 2 of 8 columns
        b"moving.mp4,good2,mia,0,3,,,\n",  # 9
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(header + b"".join(rows))
    out = tmp_path / "out"
    build(manifest, out, Config())
    got = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    assert [r["line"] for r in got] == list(range(2, 10))  # one status row per input row, in order
    by_line = {r["line"]: r for r in got}
    assert by_line[2]["status"] == by_line[9]["status"] == "ok"
    for line in range(3, 9):
        r = by_line[line]
        assert (r["status"], r["reason"]) == ("rejected", "bad_row"), r
        assert r["detail"].startswith(f"line {line}: ")
    assert "at most 128" in by_line[3]["detail"] and "not UTF-8" in by_line[4]["detail"]
    assert "characters long" in by_line[5]["detail"] and "end=-3" in by_line[6]["detail"]
    assert "beyond any video" in by_line[7]["detail"] and "2 columns" in by_line[8]["detail"]


# --- Ctrl-C and SIGTERM stop a build within seconds; the next run resumes -----------------------------------------


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_build_in_seconds_and_the_next_run_resumes(media, tmp_path, sig):

    from tests.test_build import read_shards

    n = 5
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id,identity\n" + "".join(f"{media.moving},c{i},p{i % 2}\n" for i in range(n)))
    voiceface = str(Path(sys.executable).parent / "voiceface")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)

    def cmd(out):
        return [voiceface, "build", str(manifest), "--out", str(out), "--workers", "1"]

    out = tmp_path / "out"
    # a session of its own, like a terminal's foreground job: the signal goes to the whole process group
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    status_dir = out / ".work" / "clips"
    deadline = time.time() + 240
    while time.time() < deadline and not list(status_dir.glob("*.json")):
        time.sleep(0.05)
    t0 = time.time()
    if sig == "SIGINT":  # Ctrl-C at a terminal: the whole foreground process group gets it
        os.killpg(proc.pid, signal.SIGINT)
    else:  # a supervisor or `kill PID`: the build's own process
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    stopped_in = time.time() - t0
    assert proc.returncode == 130, stderr[-3000:]
    assert stopped_in < 20, f"took {stopped_in:.1f}s to stop"
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("interrupted: ")]  # the CLI's own line
    assert len(said) == 1 and said[0].endswith("Run the same command again to resume."), stderr[-2000:]
    done = len(list(status_dir.glob("*.json")))
    assert 1 <= done < n
    statuses = [json.loads(p.read_text()) for p in status_dir.glob("*.json")]
    assert all(s["status"] == "ok" for s in statuses)  # nothing recorded as a failure by the stop
    # the next run redoes only what the stop left, and ends as a clean build does
    r = subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{n - done} new, {done} cached" in r.stdout + r.stderr
    clean = tmp_path / "clean"
    assert subprocess.run(cmd(clean), env=env, capture_output=True, timeout=600).returncode == 0
    assert shard_digest(out) == shard_digest(clean) and untimed_rows(out) == untimed_rows(clean)
    assert len({s["__key__"] for s in read_shards(out)}) == len(read_shards(out))


# --- a full disk: one line, and a re-run after freeing space equals a clean run -----------------------------------


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0, reason="mounts a tmpfs"
)
def test_a_full_disk_gives_one_line_and_a_rerun_after_freeing_space_equals_a_clean_run(media, tmp_path):

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        manifest = tmp_path / "m.csv"
        manifest.write_text("source,id,identity\n" + "".join(f"{media.moving},c{i},p{i % 2}\n" for i in range(4)))
        voiceface = str(Path(sys.executable).parent / "voiceface")
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)

        def build_into(out):
            cmd = [voiceface, "build", str(manifest), "--out", str(out), "--workers", "1"]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

        r = build_into(disk / "out")
        assert r.returncode == 1, r.stderr[-3000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "no space left on the device" in errors[0], r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        statuses = [json.loads(p.read_text()) for p in (disk / "out" / ".work" / "clips").glob("*.json")]
        assert all(s["status"] == "ok" for s in statuses)  # no clip recorded as failed by the full disk
        # free space (a bigger disk), run again: the same as a clean build
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        r = build_into(disk / "out")
        assert r.returncode == 0, r.stderr[-3000:]
        clean = tmp_path / "clean"
        assert build_into(clean).returncode == 0
        assert shard_digest(disk / "out") == shard_digest(clean)
        assert untimed_rows(disk / "out") == untimed_rows(clean)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


# --- two runs on one OUT --------------------------------------------------------------------------------------------


def test_two_builds_on_one_out_the_second_is_refused_or_waits(media, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id,identity\n" + "".join(f"{media.moving},c{i},p{i % 2}\n" for i in range(3)))
    voiceface = str(Path(sys.executable).parent / "voiceface")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"

    def start(*extra):
        cmd = [voiceface, "build", str(manifest), "--out", str(out), "--workers", "1", *extra]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".lock").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    second = start()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and f"in use by pid {first.pid}" in err and "--wait" in err
    waiting = start("--wait")  # queues behind the first, then finds everything done
    assert first.wait(timeout=600) == 0
    out_w, err_w = waiting.communicate(timeout=600)
    assert waiting.returncode == 0 and "3 cached" in out_w + err_w
    clean = tmp_path / "clean"
    cmd = [voiceface, "build", str(manifest), "--out", str(clean), "--workers", "1"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    assert shard_digest(out) == shard_digest(clean) and untimed_rows(out) == untimed_rows(clean)
    assert not list(out.rglob("*.partial"))


def test_moved_rows_get_their_new_line_and_leftover_partials_are_removed(media, tmp_path):
    shutil.copy(media.moving, tmp_path / "moving.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id,identity,start,end\nmoving.mp4,a,p,0,3\nmoving.mp4,b,p,3,6\n")
    out = tmp_path / "out"
    build(manifest, out, Config())
    # rows move (and one is gone); a killed run of another process left half-written files behind
    manifest.write_text("source,id,identity,start,end\n# a comment line\nmoving.mp4,b,p,3,6\n")
    leftovers = [out / ".work" / "clips" / "a.tar.4242.partial", out / ".work" / "rejected" / "a.jsonl.4242.partial"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    summary = build(manifest, out, Config())
    assert summary["clips_cached"] == 1
    rows = [json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()]
    assert [(r["id"], r["line"]) for r in rows] == [("b", 3)]  # this manifest's line, not the first build's
    assert not any(p.exists() for p in leftovers)
