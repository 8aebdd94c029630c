"""AV sync / active speaker: the offset search on synthetic signals with a known offset, the score on generated
speaking faces (in sync, out of sync, still), its measures, its flag and the two stricter uses of it (reject,
review queue)."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.avsync import AVSyncTracker, band_loudness, mouth_opening, mouth_shape, offset_profile, span_measures
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


def test_mouth_shape_is_the_lips_in_eye_distances_around_their_centre():
    p = np.random.default_rng(3).uniform(0, 100, (68, 2))
    p[36:42], p[42:48] = (0, 0), (60, 0)
    shape = mouth_shape(p)
    assert shape.shape == (40,) and np.allclose(shape.reshape(20, 2).mean(0), 0)
    assert np.allclose(mouth_shape(p * 2 + 7), shape)  # the same face twice the size, elsewhere


def test_mouth_opening_is_the_inner_lip_gap_in_eye_distances():
    p = np.zeros((68, 2))
    p[36:42], p[42:48] = (0, 0), (60, 0)  # eye centres 60 px apart
    p[61:64, 1], p[65:68, 1] = 100, 112  # 12 px between the inner lips
    assert mouth_opening(p) == pytest.approx(0.2)
    assert mouth_opening(p * 2) == pytest.approx(0.2)  # the same face twice the size


def test_band_loudness_is_the_speech_band_level_of_each_frame():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.where(t < 1.0, 3000 * np.sin(2 * np.pi * 1000 * t), 3000 * np.sin(2 * np.pi * 60 * t)).astype(np.int16)
    loud = band_loudness(audio, 25.0)  # 1 s of a 1 kHz tone, then 1 s of a 60 Hz hum
    assert len(loud) == 50
    assert loud[5:20].min() > loud[30:45].max() + 30  # the hum lies outside the speech band


def _speechlike(n: int, rng) -> np.ndarray:
    """A syllable-rate random signal: noise smoothed over ~5 frames."""
    return np.convolve(rng.standard_normal(n + 8), np.ones(5) / 5, mode="same")[4 : n + 4]


@pytest.mark.parametrize("offset", [0, 3, 10, -7])
def test_the_offset_search_finds_a_known_offset(offset):
    rng = np.random.default_rng(offset + 20)
    n = 150  # 6 s at 25 fps
    mouth = _speechlike(n + 40, rng)
    loud = np.roll(mouth, offset) + 0.5 * rng.standard_normal(n + 40)  # the sound `offset` frames late, noisy
    frames = np.arange(20, 20 + n)
    profile = offset_profile(mouth[frames], frames, loud, 15)
    assert len(profile) == 31 and int(np.argmax(profile)) - 15 == offset
    assert profile.max() - np.median(profile) > 0.5
    # several mouth measures, the sound following a mix of them: the multiple correlation finds the offset too
    parts = np.stack([_speechlike(n + 40, rng) for _ in range(3)], 1)
    loud = np.roll(parts @ [1.0, -0.5, 0.3], offset) + 0.3 * rng.standard_normal(n + 40)
    profile = offset_profile(parts[frames], frames, loud, 15)
    assert int(np.argmax(profile)) - 15 == offset and profile.min() >= 0 and profile.max() - np.median(profile) > 0.5


def test_span_measures_flag_late_and_unrelated_sound_and_a_still_mouth():
    cfg = FilterConfig()
    fps, rng = 25.0, np.random.default_rng(5)
    n = 200
    signal = _speechlike(n, rng)
    frames = np.arange(10, 160)  # every frame, 6 s
    times = frames / fps
    mouth = 0.1 + 0.05 * signal[frames]

    def measure(mouth, loud, k=None):  # the mouth's opening stands for its shape here
        return span_measures(times[:k], mouth[:k], mouth[:k, None], loud, fps, cfg)

    synced = measure(mouth, signal)
    assert abs(synced["av_offset_s"]) <= 0.04 and synced["av_sync"] > 0.5 and not synced["av_unsynced"]  # a frame
    assert synced["av_confidence"] >= synced["av_sync"] and synced["mouth_motion"] > cfg.min_mouth_motion
    late = measure(mouth, np.roll(signal, 10))  # the sound 0.4 s late: a clear peak there, av_sync <= 0
    assert abs(late["av_offset_s"] - 0.4) <= 0.04 and late["av_confidence"] > 0.5
    assert late["av_sync"] <= 0 and late["av_unsynced"]
    other = measure(mouth, _speechlike(n, rng))
    assert other["av_unsynced"] and other["av_sync"] < synced["av_sync"] - 0.3
    still = measure(np.full(len(times), 0.1), signal)
    assert (still["av_sync"], still["mouth_motion"], still["av_unsynced"]) == (0.0, 0.0, True)
    short = measure(mouth, signal, k=20)  # 0.8 s: too little evidence
    assert short["av_sync"] is None and not short["av_unsynced"]


def test_the_tracker_measures_each_frame_once_and_scores_every_face():
    """Face frames 1 s apart, the context frames of the whole clip: each frame gets one mouth measure, from the
    box of its own slot's face, and every face is scored once its span has passed."""
    cfg = FilterConfig(av_sync_span_s=4.0)
    audio = np.random.default_rng(1).integers(-3000, 3000, 8 * SAMPLE_RATE).astype(np.int16)
    pts = np.zeros((68, 2))
    pts[36:42], pts[42:48] = (0, 0), (50, 0)
    calls = []

    def landmarks(img, box):  # the test frames carry the mouth gap in their first pixel
        calls.append(box)
        q = pts.copy()
        q[65:68, 1] = float(img[0, 0])
        return q

    tracker = AVSyncTracker(cfg, audio, 0.0, landmarks, 25.0)
    scored = []
    times = np.round(np.arange(0.0, 7.0, 0.08), 2)
    started = set()
    for i, t in enumerate(times):
        slot = int(t)  # the grid frame of slot k is near k + 0.5
        scored += tracker.push(float(t), np.full((2, 2), i % 7, np.uint8), slot)
        if t - slot >= 0.44 and slot not in started and slot != 3:  # slot 3: no face
            started.add(slot)
            tracker.start(("face", slot, np.zeros((4, 4, 3))), float(t), (0, 0, 2, 2))  # arrays: never compared
    scored += tracker.finish()
    assert sorted(item[1] for item, _ in scored) == [0, 1, 2, 4, 5, 6]
    assert len(calls) == len(times) - sum(int(t) == 3 for t in times)  # one measure per frame with a face
    assert all(len(s) == 1 and s[0]["mouth_motion"] > 0 and s[0]["av_offset_s"] is not None for _, s in scored)


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
        assert s.av_sync == pytest.approx(np.median([m["av_sync"] for m in metas]), abs=1e-3) and s.av_sync > 0.4
        assert abs(s.av_offset_s) <= FilterConfig().av_sync_tolerance_s and s.av_confidence >= s.av_sync
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


# --- active speaker ---------------------------------------------------------------------------------------------


def test_of_two_faces_the_one_whose_mouth_follows_the_voice_is_chosen():
    """Two faces in every face frame, no hint: the tracker follows each on its own mouth track (linked across
    slots by position), and the stage keeps the one whose mouth follows the loudness, whichever is listed first."""
    from dataclasses import replace

    from pipeline.records import Face, FaceHit, SpeakerChoice, Window
    from pipeline.stages.avsync import choose

    fps, rng = 25.0, np.random.default_rng(7)
    n = 8 * 25
    signal = _speechlike(n + 20, rng)
    loud_of_frame = np.repeat(signal[:n], 1)
    audio = np.zeros(n * SAMPLE_RATE // 25, np.int16)
    for j in range(n):  # one frame's worth of 1 kHz tone at the signal's level: the loudness follows it
        t = np.arange(640) / SAMPLE_RATE
        audio[j * 640 : (j + 1) * 640] = (3000 * 10 ** (loud_of_frame[j] / 2) * np.sin(2 * np.pi * 1000 * t)).astype(
            np.int16
        )
    other = _speechlike(n + 20, rng)
    pts = np.zeros((68, 2))
    pts[36:42], pts[42:48] = (0, 0), (50, 0)

    def landmarks(img, box):  # each face's crop has the frame number in its first row, and which face in its second
        j = int(img[0, 0])
        gap = 10 + 3 * (signal[j] if img[1, 0] == 0 else other[j])
        q = pts.copy()
        q[61:64, 1], q[65:68, 1] = 0, gap
        q[48:60, 1] = np.linspace(-gap / 2, gap / 2, 12)
        return q + [box[0], 0]

    def hit(k, x):
        face = Face((x, 0, x + 80, 80), [[0, 0]] * 5, 1.0, np.zeros((8, 8, 3), np.uint8), None, 2, SpeakerChoice.SYNC)
        return FaceHit(Window(k, k * SAMPLE_RATE, SAMPLE_RATE, 1.0, -20.0), k + 0.5, face)

    cfg = FilterConfig()
    tracker = AVSyncTracker(cfg, audio, 0.0, landmarks, fps)
    scored = []
    for j in range(n):
        t, slot = j / fps, j // 25
        frame = np.full((100, 400), j, np.uint8)
        frame[1:, 200:] = 1  # the right-hand face's half
        frame[1:, :200] = 0
        scored += tracker.push(t, frame, slot)
        if j % 25 == 12:  # the face frame: the speaker (x 10) listed first in odd slots, second in even ones
            speaker, listener = hit(slot, 10), hit(slot, 300)
            first, second = (listener, speaker) if slot % 2 == 0 else (speaker, listener)
            item = replace(first, candidates=(second,))
            tracker.start(item, t, first.face.bbox, second.face.bbox)
    scored += tracker.finish()
    chosen = [choose(item, scores)[0] for item, scores in scored]
    assert len(chosen) == 8 and all(h.face.bbox[0] == 10 for h in chosen), [h.measures for h in chosen]
    assert all(not h.measures["av_unsynced"] and h.measures["faces_scored"] == 2 for h in chosen)
