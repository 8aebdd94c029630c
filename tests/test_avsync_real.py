"""The AV-sync targets on real talking heads (../shared/data/realvids): the 9 clips as they are, dubbed with
another clip's voice and with their audio 0.4 s late (versions made with ffmpeg into a temp dir, as
benchmarks/bench_avsync_real.py does), through the clip pipeline. Skipped without the data.

Targets: at most 10 % of in-sync windows flagged av_unsynced, at least 90 % of dubbed and 80 % of 0.4 s-late
windows flagged, and every in-sync clip's median av_sync above every dubbed or late clip's. The tests assert the
targets the default score (av_sync_mouth "pixels") meets, and guard the one it does not meet yet (the clips'
medians) at the level measured (2026-12-03) with a small margin; benchmarks/bench_avsync_real.py prints each
target's verdict."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config
from pipeline.media import probe
from pipeline.records import Clip
from pipeline.tars import read_samples
from tests.conftest import SHARED_DATA, requires_shared_data

pytestmark = [pytest.mark.realdata, pytest.mark.slow, requires_shared_data]
REALVIDS = SHARED_DATA / "realvids"
DUB_FROM = 3  # clip i is dubbed with the voice of clip i + 3 (another person)


def ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[tuple[dict, list[dict]]]]:
    """{version: [(clip status, sample jsons) per clip]} for sync, dubbed and late_0.4."""
    tmp = tmp_path_factory.mktemp("avsync_real")
    clips = sorted(REALVIDS.glob("*.mp4"))
    files: dict[str, list[Path]] = {"sync": clips, "dubbed": [], "late_0.4": []}
    for i, clip in enumerate(clips):
        dur = probe(clip).duration
        other = clips[(i + DUB_FROM) % len(clips)]
        dub, late = tmp / f"{clip.stem}_dubbed.mp4", tmp / f"{clip.stem}_late.mp4"
        ffmpeg("-i", clip, "-stream_loop", "-1", "-i", other, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
               "-c:a", "aac", "-t", f"{dur:.3f}", dub)  # fmt: skip
        ffmpeg("-i", clip, "-itsoffset", 0.4, "-i", clip, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
               "-c:a", "aac", "-t", f"{dur:.3f}", late)  # fmt: skip
        files["dubbed"].append(dub)
        files["late_0.4"].append(late)
    cfg = Config.from_dict({"faces": {"embeddings": False}})
    out: dict[str, list[tuple[dict, list[dict]]]] = {}
    for name, paths in files.items():
        ctx = BuildContext(out=tmp / "out" / name, cfg=cfg)
        for path in paths:
            clip_id = path.stem.replace(".", "p")
            status = run_clip(Clip(clip_id, str(path), clip_id, 1), ctx)
            ok = status.status == "ok"
            metas = [json.loads(s["json"]) for s in read_samples(ctx.clip_tar(clip_id))] if ok else []
            out.setdefault(name, []).append((status.to_dict(), metas))
    return out


def flagged(results, version: str) -> float:
    flags = [m["av_unsynced"] for _, metas in results[version] for m in metas if m.get("av_sync") is not None]
    assert len(flags) >= 50  # most windows of the 9 clips were scored
    return float(np.mean(flags))


def test_every_window_and_clip_reports_its_offset_and_confidence(results):
    for status, metas in results["sync"]:
        assert status["status"] == "ok" and metas
        scored = [m for m in metas if m["av_sync"] is not None]
        assert all(abs(m["av_offset_s"]) <= 0.6 + 1e-6 and m["av_confidence"] >= 0 for m in scored)
        assert status["av_offset_s"] is not None and status["av_confidence"] is not None


def test_at_most_a_tenth_of_in_sync_windows_are_flagged(results):
    """Target <= 10 % (measured 2026-12-03: 7 %)."""
    assert flagged(results, "sync") <= 0.10


def test_dubbed_windows_are_flagged(results):
    """Target >= 90 % (measured: 92 %)."""
    assert flagged(results, "dubbed") >= 0.90


def test_windows_with_the_audio_late_are_flagged(results):
    """Target >= 80 % of 0.4 s-late windows (measured: 94 %)."""
    assert flagged(results, "late_0.4") >= 0.80


def test_clip_medians_overlap_no_more_than_measured(results):
    """A guard: the lowest in-sync clip's median av_sync was 0.02 below the highest dubbed or 0.4 s-late clip's
    (target: above every one of them, not met: one in-sync clip, liveportrait_d11, has a median of -0.02)."""
    medians = {name: [s["av_sync"] for s, _ in runs if s["av_sync"] is not None] for name, runs in results.items()}
    assert min(medians["sync"]) > max(medians["dubbed"] + medians["late_0.4"]) - 0.07


@pytest.fixture(scope="module")
def interview(tmp_path_factory) -> list[dict]:
    """The split-screen interview (two people, both speak, no hint), embeddings off: its sample jsons."""
    ctx = BuildContext(out=tmp_path_factory.mktemp("interview"), cfg=Config.from_dict({"faces": {"embeddings": False}}))
    status = run_clip(Clip("interview", str(REALVIDS / "visualvoice_interview.mp4"), "interview", 1), ctx)
    assert status.status == "ok" and status.speaker_choice == "sync"
    return [json.loads(s["json"]) for s in read_samples(ctx.clip_tar("interview"))]


def test_both_faces_of_the_interview_are_scored(interview):
    assert len(interview) >= 15 and all(m["speaker_choice"] == "sync" and m["faces_scored"] == 2 for m in interview)


def test_the_interview_keeps_the_face_that_speaks(interview):
    """Who speaks, from the frames (mouth crops every 0.12 s, looked at): from 4.0 to 5.4 s the left-hand man's
    mouth opens wide and closes again and again; from 11.0 to 12.4 s it stays closed and still while the right-hand
    man's opens and closes. The frame is 1280 px wide: the left face's centre is at x 300-500, the right's 800-1000."""
    centres = {m["frame_time"]: (m["bbox"][0] + m["bbox"][2]) / 2 for m in interview}
    assert all(300 < x < 500 or 800 < x < 1000 for x in centres.values())
    left = [x for t, x in centres.items() if 4.0 <= t <= 5.4]
    right = [x for t, x in centres.items() if 11.0 <= t <= 12.4]
    assert left and right
    assert all(x < 640 for x in left) and all(x > 640 for x in right)
