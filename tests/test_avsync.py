"""AV sync / active speaker: the offset search on synthetic signals with a known offset, the score on generated
speaking faces (in sync, out of sync, still), its measures, its flag and the two stricter uses of it (reject,
review queue)."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.avsync import (
    AUDIO_BANDS,
    AVSyncTracker,
    band_levels,
    canonical_correlations,
    follow_nose,
    mouth_box,
    mouth_opening,
    mouth_patch,
    mouth_shape,
    nose_template,
    offset_profile,
    principal_components,
    span_measures,
)
from pipeline.clip import BuildContext, run_clip
from pipeline.config import SAMPLE_RATE, Config, FilterConfig, ReviewConfig
from pipeline.demo.synth import Placement, astronaut, grace_hopper, speaking_head, speech_wav, talking_head
from pipeline.media import decode_frames_on_grid, probe
from pipeline.records import Clip
from pipeline.review.queue import queue_reasons
from pipeline.tars import read_samples
from tests.conftest import H, W

SECONDS = 16
P5 = [[0, 0], [1, 0], [2, 0], [3, 0], [1.5, 1]]  # dlib's 5 points of a tiny face (eye corners, nose)


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


def test_the_mouth_box_lies_below_the_nose_and_scales_with_the_eye_distance():
    p5 = np.array([[100, 100], [80, 100], [20, 100], [40, 100], [60, 140]], float)  # eyes 60 px apart
    cx, cy, w, h = mouth_box(p5)
    assert (cx, w, h) == pytest.approx((60, 120, 96)) and cy == pytest.approx(140 + 0.42 * 60)
    assert np.allclose(mouth_box(p5 * 2), (2 * cx, 2 * cy, 2 * w, 2 * h))  # the same face twice the size


def test_band_levels_are_each_band_s_level_of_each_frame():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.where(t < 1.0, 3000 * np.sin(2 * np.pi * 1000 * t), 3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    levels = band_levels(audio, 25.0)  # 1 s of a 1 kHz tone, then 1 s of a 300 Hz one
    assert levels.shape == (50, len(AUDIO_BANDS) - 1) == (50, 4)
    assert levels[5:20, 2].min() > levels[30:45, 2].max() + 30  # 1000-2000 Hz: the first second's tone
    assert levels[30:45, 0].min() > levels[5:20, 0].max() + 30  # 100-500 Hz: the second's
    assert levels[5:45, 3].max() < levels[5:20, 2].min() - 30  # 2000-4000 Hz: neither
    hum = (3000 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)
    assert band_levels(hum, 25.0)[5:45].max() < levels[5:20, 2].min() - 30  # mains hum lies below every band


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
    assert profile.max() - np.median(profile) > 0.3  # (the ridge shrinks a perfect 1-D fit's 1 to 1 / (1 + RIDGE))
    # several mouth measures and several bands, each band following its own mix of them: the first canonical
    # correlation finds the offset too
    parts = np.stack([_speechlike(n + 40, rng) for _ in range(3)], 1)
    bands = parts @ rng.standard_normal((3, 4)) + 0.3 * rng.standard_normal((n + 40, 4))
    profile = offset_profile(parts[frames], frames, np.roll(bands, offset, axis=0), 15)
    assert int(np.argmax(profile)) - 15 == offset and profile.min() >= 0 and profile.max() - np.median(profile) > 0.4
    # the sound ends 5 frames after the last sample: offsets past that leave samples out, and those that leave
    # too few to fit score 0 rather than a fit to nothing
    short = offset_profile(parts[frames[:12]], frames[:12], bands[:37], 15)
    assert np.all(short[15 + 10 :] == 0) and np.all(np.isfinite(short)) and short[:15].max() > 0


def test_canonical_correlations_match_their_definition_and_shrink_with_the_ridge():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 3))
    Y = X @ rng.standard_normal((3, 2)) + rng.standard_normal((200, 2))
    # unshrunk: the largest singular value of the whitened cross-covariance, i.e. the best correlation of any
    # combination of X's columns with any of Y's; a search over many random combinations never beats it
    r = canonical_correlations(X, Y, ridge=0.0)
    a, b = rng.standard_normal((3, 20000)), rng.standard_normal((2, 20000))
    xa, yb = (X - X.mean(0)) @ a, (Y - Y.mean(0)) @ b
    tried = (xa * yb).sum(0) / np.sqrt((xa**2).sum(0) * (yb**2).sum(0))
    assert tried.max() <= r + 1e-9 and tried.max() > r - 0.02
    assert 0 < canonical_correlations(X, Y, ridge=0.3) < r  # shrunk
    stack = np.stack([Y, rng.standard_normal((200, 2))])
    assert np.allclose(canonical_correlations(X, stack, 0.3), [canonical_correlations(X, y, 0.3) for y in stack])
    keep = np.stack([np.arange(200) < 150, np.arange(200) >= 30]).astype(float)  # rows left out: as if not there
    assert np.allclose(
        canonical_correlations(X, stack, 0.3, keep),
        [canonical_correlations(X[:150], Y[:150], 0.3), canonical_correlations(X[30:], stack[1, 30:], 0.3)],
    )


def test_principal_components_span_the_leading_subspace():
    rng = np.random.default_rng(4)
    # 150 frames of a 192-pixel patch: 5 strong directions of different strength, and noise
    X = (rng.standard_normal((150, 5)) * [9, 7, 5, 4, 3]) @ rng.standard_normal((5, 192))
    X += rng.standard_normal((150, 192))
    Xc = X - X.mean(0)
    u = np.linalg.svd(Xc, full_matrices=False)[0][:, :5]
    scores = principal_components(X, 5)
    q = np.linalg.qr(scores)[0]
    assert np.linalg.svd(u.T @ q, compute_uv=False).min() > 0.999  # the same subspace (cosines of its angles)
    assert np.allclose(np.linalg.norm(scores, axis=0), np.linalg.svd(Xc, compute_uv=False)[:5], rtol=1e-3)
    assert np.array_equal(scores, principal_components(X, 5))  # a fixed start: the same scores every time


def test_span_measures_flag_late_and_unrelated_sound_and_a_still_mouth():
    cfg = FilterConfig()
    fps, rng = 25.0, np.random.default_rng(5)
    n = 200
    signal = _speechlike(n, rng)
    frames = np.arange(10, 160)  # every frame, 6 s
    times = frames / fps
    mouth = 0.1 + 0.5 * signal[frames]

    def measure(mouth, loud, k=None):  # one measure of the mouth stands for its patch's pixels here
        return span_measures(times[:k], mouth[:k, None], loud, fps, cfg)

    synced = measure(mouth, signal)
    assert abs(synced["av_offset_s"]) <= 0.04 and synced["av_sync"] > 0.35 and not synced["av_unsynced"]  # a frame
    assert synced["av_confidence"] >= synced["av_sync"] and synced["mouth_motion"] > cfg.min_mouth_motion
    late = measure(mouth, np.roll(signal, 10))  # the sound 0.4 s late: a clear peak there, av_sync <= 0
    assert abs(late["av_offset_s"] - 0.4) <= 0.04 and late["av_confidence"] > 0.35
    assert late["av_sync"] <= 0 and late["av_unsynced"]
    other = measure(mouth, _speechlike(n, rng))
    assert other["av_unsynced"] and other["av_sync"] < synced["av_sync"] - 0.3
    still = measure(np.full(len(times), 0.1), signal)
    assert (still["av_sync"], still["mouth_motion"], still["av_unsynced"]) == (0.0, 0.0, True)
    short = measure(mouth, signal, k=20)  # 0.8 s: too little evidence
    assert short["av_sync"] is None and not short["av_unsynced"]


def drive_tracker(tracker, frame_at, face) -> tuple[np.ndarray, list]:
    """Context frames every 0.08 s for 7 s (`frame_at(i)`), a face frame near the middle of each 1 s slot but slot 3
    (no face); returns the frame times and everything the tracker scored."""
    scored = []
    times = np.round(np.arange(0.0, 7.0, 0.08), 2)
    started = set()
    for i, t in enumerate(times):
        slot = int(t)  # the grid frame of slot k is near k + 0.5
        scored += tracker.push(float(t), frame_at(i), slot)
        if t - slot >= 0.44 and slot not in started and slot != 3:
            started.add(slot)
            tracker.start(("face", slot, np.zeros((4, 4, 3))), float(t), face)  # arrays: never compared
    scored += tracker.finish()
    return times, scored


def test_with_lips_the_tracker_reads_the_landmarks_on_every_frame_and_scores_every_face():
    """Face frames 1 s apart, the context frames of the whole clip: each frame gets one mouth measure, from the
    box of its own slot's face, and every face is scored once its span has passed."""
    cfg = FilterConfig(av_sync_span_s=4.0, av_sync_mouth="lips")
    audio = np.random.default_rng(1).integers(-3000, 3000, 8 * SAMPLE_RATE).astype(np.int16)
    pts = np.zeros((68, 2))
    pts[36:42], pts[42:48] = (0, 0), (50, 0)
    calls = []

    def landmarks(img, box):  # the test frames carry the mouth gap in their first pixel
        calls.append(box)
        q = pts.copy()
        q[65:68, 1] = float(img[0, 0])
        return q

    tracker = AVSyncTracker(cfg, audio, 0.0, 25.0, landmarks68=landmarks)
    times, scored = drive_tracker(tracker, lambda i: np.full((2, 2), i % 7, np.uint8), ((0, 0, 2, 2), P5))
    assert sorted(item[1] for item, _ in scored) == [0, 1, 2, 4, 5, 6]
    assert len(calls) == len(times) - sum(int(t) == 3 for t in times)  # one measure per frame with a face
    assert all(len(s) == 1 and s[0]["mouth_motion"] > 0 and s[0]["av_offset_s"] is not None for _, s in scored)


def test_with_pixels_the_tracker_cuts_a_patch_on_every_frame_and_scores_every_face(monkeypatch):
    """Face frames 1 s apart, the context frames of the whole clip: each frame gets one mouth patch, placed from
    its own slot's face frame, and every face is scored once its span has passed."""
    import pipeline.avsync as avsync

    cfg = FilterConfig(av_sync_span_s=4.0, av_sync_mouth="pixels")
    audio = np.random.default_rng(1).integers(-3000, 3000, 8 * SAMPLE_RATE).astype(np.int16)
    p5 = np.array([[10, 10], [18, 10], [30, 10], [38, 10], [24, 22]], float)
    boxes = []
    patch, measure, spans = avsync.mouth_patch, avsync.span_measures, []
    monkeypatch.setattr(avsync, "mouth_patch", lambda grey, box: boxes.append(box) or patch(grey, box))
    monkeypatch.setattr(avsync, "span_measures", lambda times, *a, **k: spans.append(times) or measure(times, *a, **k))
    tracker = AVSyncTracker(cfg, audio, 0.0, 25.0)

    def frame(i: int) -> np.ndarray:
        grey = np.zeros((48, 48), np.uint8)
        grey[28 : 30 + i % 7, 18:30] = 200  # a mouth opening and closing
        return grey

    times, scored = drive_tracker(tracker, frame, ((0, 0, 48, 48), p5))
    assert sorted(item[1] for item, _ in scored) == [0, 1, 2, 4, 5, 6]
    assert len(boxes) == len(times) - sum(int(t) == 3 for t in times)  # one patch per frame with a face
    assert all(b == pytest.approx(mouth_box(p5)) for b in boxes)  # a still head: the box stays where it was put
    assert all(len(s) == 1 and s[0]["mouth_motion"] > 0 and s[0]["av_offset_s"] is not None for _, s in scored)
    # spans kept inside the clip: windows 0 and 1 share [0, 4 s), windows 5 and 6 the last 4 s; each shared span
    # is scored once, and its windows get equal measures (copies)
    assert len(spans) == 4 and len({(t[0], t[-1]) for t in spans}) == 4
    by_slot = {item[1]: s[0] for item, s in scored}
    assert by_slot[0] == by_slot[1] and by_slot[5] == by_slot[6] and by_slot[0] is not by_slot[1]


def test_the_nose_template_follows_the_head_and_holds_on_a_flat_frame():
    rng = np.random.default_rng(2)
    k = np.ones(9) / 9  # a smooth texture, as skin and shading are at the grid's scale
    noise = rng.random((120, 160))
    noise = np.apply_along_axis(np.convolve, 0, np.apply_along_axis(np.convolve, 1, noise, k, "same"), k, "same")
    frame = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    p5 = np.array([[55, 40], [65, 40], [95, 40], [105, 40], [80, 80]], float)  # eye distance 40
    template, centre, step = nose_template(frame, p5)
    assert template.shape == (20, 20) and np.allclose(centre, (80, 60)) and step == pytest.approx(1.6)
    moved = np.roll(frame, (3, -4), axis=(0, 1))  # the head 4 px left and 3 px down
    assert np.allclose(follow_nose(moved, template, centre, step), (76, 63), atol=1.0)
    flat = np.full((120, 160), 90, np.uint8)
    assert np.array_equal(follow_nose(flat, template, centre, step), centre)


def test_the_mouth_patch_is_the_region_normalised():
    grey = np.zeros((100, 100), np.uint8)
    grey[50:60, 40:60] = 200  # a bright mouth in the middle of the box
    patch = mouth_patch(grey, (50.0, 55.0, 40.0, 30.0))
    assert patch.shape == (16 * 12,) and abs(patch.mean()) < 1e-5 and patch.std() == pytest.approx(1.0, abs=1e-3)
    img = patch.reshape(12, 16)
    assert img[4:8, 5:11].min() > img[:2].max()  # the bright part where it lies in the box
    assert np.allclose(mouth_patch(grey // 2 + 10, (50.0, 55.0, 40.0, 30.0)), patch, atol=0.05)


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
        assert s.av_sync == pytest.approx(np.median([m["av_sync"] for m in metas]), abs=1e-3) and s.av_sync > 0.3
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

    def points(x):  # dlib's 5 points of a face whose box starts at x: eyes 40 px apart, the nose below them
        return np.array([[x + 12, 25], [x + 28, 25], [x + 52, 25], [x + 68, 25], [x + 40, 45]], float)

    texture = (np.random.default_rng(8).random((100, 400)) * 60).astype(np.uint8)

    def hit(k, x):
        face = Face((x, 0, x + 80, 80), [[0, 0]] * 5, 1.0, np.zeros((8, 8, 3), np.uint8), None, 2, SpeakerChoice.SYNC)
        return FaceHit(Window(k, k * SAMPLE_RATE, SAMPLE_RATE, 1.0, -20.0), k + 0.5, face)

    cfg = FilterConfig(av_sync_mouth="pixels")
    tracker = AVSyncTracker(cfg, audio, 0.0, fps)
    scored = []
    for j in range(n):
        t, slot = j / fps, j // 25
        frame = texture.copy()
        for x, level in ((10, signal[j]), (300, other[j])):  # each mouth's darkness follows its own utterance
            frame[58:70, x + 25 : x + 55] = np.clip(128 + 60 * level, 0, 255)
        scored += tracker.push(t, frame, slot)
        if j % 25 == 12:  # the face frame: the speaker (x 10) listed first in odd slots, second in even ones
            speaker, listener = hit(slot, 10), hit(slot, 300)
            first, second = (listener, speaker) if slot % 2 == 0 else (speaker, listener)
            item = replace(first, candidates=(second,))
            faces = [(h.face.bbox, points(h.face.bbox[0])) for h in (first, second)]
            tracker.start(item, t, *faces)
    scored += tracker.finish()
    chosen = [choose(item, scores)[0] for item, scores in scored]
    assert len(chosen) == 8 and all(h.face.bbox[0] == 10 for h in chosen), [h.measures for h in chosen]
    assert all(not h.measures["av_unsynced"] and h.measures["faces_scored"] == 2 for h in chosen)
