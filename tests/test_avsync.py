"""AV sync / active speaker: the mouth-opening score on generated speaking faces (in sync, out of sync, still),
its measures, its flag and the two stricter uses of it (reject, review queue)."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.avsync import AVSyncTracker, loudness_db, mouth_opening, sync_score
from pipeline.clip import BuildContext, run_clip
from pipeline.config import SAMPLE_RATE, Config, FilterConfig, ReviewConfig
from pipeline.demo.synth import Placement, astronaut, grace_hopper, speaking_head, speech_wav, talking_head
from pipeline.media import decode_frames_on_grid, probe
from pipeline.records import Clip
from pipeline.review.queue import queue_reasons
from pipeline.tars import read_samples
from tests.conftest import H, W

SECONDS = 16


@dataclass
class SyncMedia:
    synced: Path  # the astronaut's mouth opens with the speech heard
    synced_hopper: Path
    other_speech: Path  # her mouth follows a different utterance
    late: Path  # her mouth follows the same speech 0.4 s late (dubbed or offset footage)
    still: Path  # a photo over the speech


@pytest.fixture(scope="module")
def sm(media, tmp_path_factory) -> SyncMedia:
    d = tmp_path_factory.mktemp("avsync")
    other = speech_wav(d / "other.wav", voice="en", text="The quick brown fox jumps over the lazy dog, while seven "
                       "wizards box and quiz the jumping sphinx of black quartz.")  # fmt: skip
    a, s = astronaut(), media.speech16k
    return SyncMedia(
        speaking_head(d / "synced.mp4", a, s, SECONDS, size=(W, H)),
        speaking_head(d / "synced_hopper.mp4", grace_hopper(), s, SECONDS, size=(W, H)),
        speaking_head(d / "other.mp4", a, s, SECONDS, mouth_audio=other, size=(W, H)),
        speaking_head(d / "late.mp4", a, s, SECONDS, mouth_offset_s=0.4, size=(W, H)),
        talking_head(d / "still.mp4", [Placement(a, 150, W / 2, H / 2)], SECONDS, s, size=(W, H)),
    )


def run(path, tmp_path, filters=None, review=None):
    cfg = Config.from_dict({"filters": filters or {}, "review": review or {}})
    ctx = BuildContext(out=tmp_path / "out", cfg=cfg)
    s = run_clip(Clip("c1", str(path), "person", 1), ctx)
    metas = [json.loads(x["json"]) for x in read_samples(ctx.clip_tar("c1"))] if s.status == "ok" else []
    return s, metas


def flagged_share(metas) -> float:
    return sum(m["av_unsynced"] for m in metas) / len(metas)


# --- the measures ----------------------------------------------------------------------------------------------


def test_mouth_opening_is_the_inner_lip_gap_in_eye_distances():
    p = np.zeros((68, 2))
    p[36:42], p[42:48] = (0, 0), (60, 0)  # eye centres 60 px apart
    p[61:64, 1], p[65:68, 1] = 100, 112  # 12 px between the inner lips
    assert mouth_opening(p) == pytest.approx(0.2)
    assert mouth_opening(p * 2) == pytest.approx(0.2)  # the same face twice the size


def test_loudness_is_the_rms_level_around_each_instant():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = np.where(t < 0.5, 1000 * np.sin(2 * np.pi * 440 * t), 0).astype(np.int16)
    db = loudness_db(audio, np.array([4000, 12000]))
    assert db[0] == pytest.approx(20 * np.log10(1000 / np.sqrt(2)), abs=0.1)  # a sine's RMS is peak / sqrt 2
    assert db[1] == pytest.approx(0.0, abs=0.01)  # silence: the floor


def test_sync_score_follows_the_correlation_of_mouth_and_loudness():
    cfg = FilterConfig()
    rng = np.random.default_rng(0)
    fps, n = 25, 25
    times = 1.0 + np.arange(n) / fps
    level = rng.uniform(0.1, 1.0, n)  # loudness at each frame
    audio = np.zeros(3 * SAMPLE_RATE, np.int16)
    for t, a in zip(times, level, strict=True):  # 40 ms of noise at each frame's level
        i = int(t * SAMPLE_RATE)
        audio[i - 320 : i + 320] = (a * 8000 * rng.standard_normal(640)).astype(np.int16)
    openings = 0.05 + 0.1 * (np.log10(level) - np.log10(level).min())
    synced = sync_score(times, openings, audio, 0.0, cfg)
    assert synced["av_sync"] > 0.95 and synced["av_lag_s"] == 0.0 and not synced["av_unsynced"]
    # a mouth moving to something else: the best of the lags of a chance correlation, mostly under the threshold
    null = [sync_score(times, rng.permutation(openings), audio, 0.0, cfg)["av_sync"] for _ in range(200)]
    assert np.median(null) < 0.3 and np.mean(np.array(null) < cfg.min_av_sync) > 0.7
    still = sync_score(times, np.full(n, 0.1), audio, 0.0, cfg)
    assert (still["av_sync"], still["mouth_motion"], still["av_unsynced"]) == (0.0, 0.0, True)
    beyond = sync_score(times + 5, openings, audio, 0.0, cfg)  # frames past the audio's end
    assert beyond["av_sync"] is None and not beyond["av_unsynced"]
    too_few = sync_score(times[:3], openings[:3], audio, 0.0, cfg)
    assert too_few["av_sync"] is None


def test_the_tracker_scores_faces_whose_spans_overlap():
    """Two face frames closer than the span: both stay open at once, each gets the frames of its own span."""
    cfg = FilterConfig(av_sync_span_s=1.0)
    audio = np.random.default_rng(1).integers(-3000, 3000, 4 * SAMPLE_RATE).astype(np.int16)
    pts = np.zeros((68, 2))
    pts[36:42], pts[42:48] = (0, 0), (50, 0)

    def landmarks(img, box):  # the test frames carry the mouth gap in their first pixel
        q = pts.copy()
        q[65:68, 1] = float(img[0, 0])
        return q

    tracker = AVSyncTracker(cfg, audio, 0.0, landmarks)
    scored = []
    for i, t in enumerate(np.arange(0.5, 3.5, 0.04)):
        scored += tracker.push(float(t), np.full((2, 2), i % 7, np.uint8))
        if abs(t - 1.5) < 1e-6 or abs(t - 1.82) < 1e-6:
            tracker.start(("face", np.zeros((4, 4, 3))), float(t), (0, 0, 2, 2))  # arrays: never compared
    scored += tracker.finish()
    assert len(scored) == 2 and all(score["mouth_motion"] > 0 for _, score in scored)


def test_context_frames_come_grey_in_time_order_around_each_grid_time(media):
    info = probe(media.moving)
    plain = list(decode_frames_on_grid(media.moving, info, 1.0, 0.5, 1.0, 4))
    frames = list(decode_frames_on_grid(media.moving, info, 1.0, 0.5, 1.0, 4, context_s=0.6))
    assert [f.time for f in frames] == sorted(f.time for f in frames)
    on_grid = [f for f in frames if f.on_grid]
    assert [(f.index, f.time) for f in on_grid] == [(f.index, f.time) for f in plain]  # the same frames as before
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(on_grid, plain, strict=True))
    context = [f for f in frames if not f.on_grid]
    d = 1 / info.fps
    for f in context:
        assert f.rgb.shape == (H, W) and f.rgb.dtype == np.uint8  # the luma plane
        assert abs(f.time + d / 2 - (1.0 + 0.5 + f.index)) < 0.3 + 1e-6
    assert all(sum(f.index == k for f in context) == round(0.6 * info.fps) for k in range(4))
    for g in on_grid:  # the grid frame is among the context frames: its luma, as the RGB frame shows it
        grey = next(f for f in context if f.time == g.time).rgb.astype(np.float64)
        luma = g.rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
        assert np.corrcoef(grey.ravel(), luma.ravel())[0, 1] > 0.99
    # one every context_step_s, counted from the grid time
    stepped = [f for f in decode_frames_on_grid(media.moving, info, 1.0, 0.5, 1.0, 4, 1.0, 0.08) if not f.on_grid]
    for k in range(4):
        times = np.array([f.time for f in stepped if f.index == k])
        assert len(times) == 13 and np.allclose(np.diff(times), 0.08, atol=1e-3)


# --- on generated speaking faces ---------------------------------------------------------------------------------


def test_a_face_speaking_the_audio_is_kept_unflagged(sm, tmp_path):
    for path in (sm.synced, sm.synced_hopper):
        s, metas = run(path, tmp_path / path.stem)
        assert s.status == "ok" and len(metas) >= SECONDS - 2
        assert flagged_share(metas) <= 0.1, [m["av_sync"] for m in metas]
        assert s.window_flags.get("av_unsynced", 0) == sum(m["av_unsynced"] for m in metas)
        assert s.av_sync == pytest.approx(np.median([m["av_sync"] for m in metas]), abs=1e-3) and s.av_sync > 0.7
        assert all(m["mouth_motion"] > FilterConfig().min_mouth_motion for m in metas)


def test_a_mouth_out_of_sync_with_the_audio_is_flagged(sm, tmp_path):
    for path in (sm.other_speech, sm.late):
        s, metas = run(path, tmp_path / path.stem)
        assert s.status == "ok" and s.window_rejections == {}  # flagged, not dropped
        assert flagged_share(metas) >= 0.6, [m["av_sync"] for m in metas]
        assert s.window_flags["av_unsynced"] == sum(m["av_unsynced"] for m in metas)
        assert s.av_sync < FilterConfig().min_av_sync  # the clip's median: a clearer verdict than one window's


def test_a_still_photo_over_speech_is_flagged_with_a_zero_score(sm, tmp_path):
    s, metas = run(sm.still, tmp_path)
    assert metas and all(m["av_sync"] == 0.0 and m["av_unsynced"] for m in metas)
    assert s.window_flags == {"av_unsynced": len(metas)}


def test_rejecting_unsynced_windows_records_the_reason(sm, tmp_path):
    s, metas = run(sm.other_speech, tmp_path, filters={"reject_av_unsynced": True})
    _, flagged = run(sm.other_speech, tmp_path / "flag")
    n_flagged = sum(m["av_unsynced"] for m in flagged)
    assert s.window_rejections == {"av_unsynced": n_flagged}
    assert len(metas) == len(flagged) - n_flagged and not any(m["av_unsynced"] for m in metas)


def test_the_score_can_be_turned_off(sm, tmp_path):
    s, metas = run(sm.still, tmp_path, filters={"av_sync": False})
    assert metas and all("av_sync" not in m for m in metas) and s.window_flags == {}


def test_flagged_windows_are_queued_for_review_only_when_asked():
    metrics = {"av_sync": 0.05, "av_unsynced": True}
    assert queue_reasons(metrics, ReviewConfig()) == []
    assert queue_reasons(metrics, ReviewConfig(queue_av_unsynced=True)) == ["av_unsynced"]
    assert queue_reasons({"av_sync": 0.8, "av_unsynced": False}, ReviewConfig(queue_av_unsynced=True)) == []
