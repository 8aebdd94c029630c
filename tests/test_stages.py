"""Each clip stage called alone, on records, without a video: what it keeps, what it rejects and why."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import SAMPLE_RATE, Config, ExtrasConfig, FaceConfig, FilterConfig, SpeechConfig
from pipeline.demo.synth import astronaut, grace_hopper, no_face
from pipeline.media import DecodedFrame, MediaInfo
from pipeline.reasons import ClipError, Reason
from pipeline.records import (
    Clip,
    ClipAudio,
    ClipMedia,
    Face,
    FaceHit,
    SpeakerChoice,
    Status,
    Window,
)
from pipeline.sources import Source
from pipeline.stages.avsync import AVSyncStage
from pipeline.stages.decode import FrameGrid
from pipeline.stages.extras import SampleMaker
from pipeline.stages.faces import FaceStage
from pipeline.stages.identity import IdentityStage
from pipeline.stages.source import SourceStage
from pipeline.stages.speech import SpeechStage
from tests.conftest import best_lag, read_wav

W = SAMPLE_RATE


def frame_with(photo, width: int, index: int, time: float, size=(640, 360)) -> DecodedFrame:
    """A grid frame holding one photo's face `width` px wide at the centre."""
    canvas = Image.new("RGB", size, (90, 90, 90))
    l, t, r, b = photo.face_box
    s = width / (r - l)
    img = Image.fromarray(photo.image).resize((round(photo.image.shape[1] * s), round(photo.image.shape[0] * s)))
    canvas.paste(img, (round(size[0] / 2 - (l + r) / 2 * s), round(size[1] / 2 - (t + b) / 2 * s)))
    return DecodedFrame(index, time, np.asarray(canvas))


def window(k: int, **measures) -> Window:
    return Window(k, k * W, W, 0.9, -20.0, measures)


# -- speech ------------------------------------------------------------------------------------------------------


def test_speech_stage_keeps_speech_and_rejects_the_rest_with_measures(media):
    speech = read_wav(media.speech16k)[: 2 * W]
    loud = np.clip(speech.astype(np.int32) * 40, -32768, 32767).astype(np.int16)  # clipped: same speech, too loud
    audio = np.concatenate([np.zeros(W, np.int16), speech, loud])
    kept, rejected = SpeechStage(SpeechConfig(), FilterConfig(music_noise=False))(ClipAudio(audio, audio))
    assert [w.index for w in kept] == [1, 2]
    assert all(w.start == w.index * W and w.length == W and "snr_db" in w.measures for w in kept)
    by_index = {v.window.index: v for v in rejected}
    assert set(by_index) == {0, 3, 4}
    assert by_index[0].reason == Reason.NO_SPEECH and by_index[0].status == Status.REJECTED
    assert by_index[0].hit is None and "speech ratio" in by_index[0].detail
    assert by_index[3].reason == Reason.CLIPPING and by_index[3].measures["clipping"] > 0.01


# -- faces -------------------------------------------------------------------------------------------------------


def test_face_stage_finds_the_face_and_keeps_each_windows_rejection():
    grid = FrameGrid(0.5, 1.0, 4, 1.0)
    stage = FaceStage(FaceConfig(embeddings=False), FilterConfig(), [window(0), window(1), window(2)], grid)
    hit = stage(frame_with(astronaut(), 120, 0, 0.5))
    assert isinstance(hit, FaceHit) and hit.window.index == 0 and hit.frame_time == 0.5
    assert hit.face.choice == SpeakerChoice.ONLY and hit.face.crop.shape == (224, 224, 3)
    assert {"sharpness", "yaw", "pitch", "out_of_frame"} <= set(hit.measures)
    assert stage(frame_with(no_face(), 200, 1, 1.5)) is None
    assert stage(frame_with(astronaut(), 120, 3, 3.5)) is None  # not a speech window: not looked at
    verdicts = stage.finish()
    assert [(v.window.index, v.reason) for v in verdicts] == [(1, Reason.NO_FACE), (2, Reason.FRAME_MISSING)]


def test_a_face_filter_rejection_keeps_the_face_for_review():
    grid = FrameGrid(0.5, 1.0, 1, 1.0)
    stage = FaceStage(FaceConfig(embeddings=False), FilterConfig(min_sharpness=1e9), [window(0)], grid)
    assert stage(frame_with(grace_hopper(), 130, 0, 0.5)) is None
    [v] = stage.finish()
    assert v.reason == Reason.BLURRY and v.hit is not None and v.hit.face.crop.shape == (224, 224, 3)
    assert v.measures["sharpness"] < 1e9


def test_first_good_face_grid_maps_frames_to_windows():
    grid = FrameGrid.for_clip(Config(extras=ExtrasConfig(first_good_face=True, first_face_span_s=0.5)), 3)
    assert grid.count == 15 and grid.step_s == 0.2
    assert [grid.window_of(i) for i in range(7)] == [0, 0, 0, None, None, 1, 1]


# -- AV sync -----------------------------------------------------------------------------------------------------


def test_avsync_stage_scores_a_still_mouth_as_unsynced_and_rejects_when_asked(media):
    from pipeline.faces import DlibModels

    speech = read_wav(media.speech16k)[: 3 * W]
    frame = frame_with(astronaut(), 140, 1, 1.5)
    grey = np.asarray(Image.fromarray(frame.rgb).convert("L"))
    face = FaceStage(FaceConfig(embeddings=False), FilterConfig(), [window(1)], FrameGrid(0.5, 1.0, 3, 1.0))(frame)
    assert face is not None
    for reject in (False, True):
        stage = AVSyncStage(FilterConfig(reject_av_unsynced=reject), ClipAudio(speech, speech), 0.0, DlibModels.get())
        out = []
        for t in np.arange(0.0, 1.5, 0.08):  # 3 s of frames around the face frame: enough evidence
            out += stage.push(DecodedFrame(1, float(t), grey, on_grid=False))
        stage.start(face)
        for t in np.arange(1.5, 3.0, 0.08):
            out += stage.push(DecodedFrame(1, float(t), grey, on_grid=False))
        out += stage.finish()
        [o] = out
        if reject:
            assert o.reason == Reason.AV_UNSYNCED and o.hit is not None
        else:
            assert isinstance(o, FaceHit) and o.measures["av_unsynced"] is True and o.measures["av_sync"] == 0.0


# -- identity ----------------------------------------------------------------------------------------------------


def _hit(k: int, embedding: np.ndarray) -> FaceHit:
    face = Face((0, 0, 100, 100), [[0, 0]] * 5, 1.0, np.zeros((8, 8, 3), np.uint8), None, 1, SpeakerChoice.ONLY)
    return FaceHit(window(k), k + 0.5, replace(face, embedding=embedding.astype(np.float32)))


def test_identity_stage_drops_the_face_far_from_the_clips_medoid():
    rng = np.random.default_rng(0)
    base, other = rng.normal(size=128), rng.normal(size=128)
    hits = [_hit(k, base + 0.01 * rng.normal(size=128)) for k in range(5)] + [_hit(5, other)]
    kept, rejected = IdentityStage(FaceConfig(), FilterConfig(max_identity_distance=0.6))(hits)
    assert [h.window.index for h in kept] == [0, 1, 2, 3, 4]
    assert all(h.measures["clip_identity_distance"] < 0.6 for h in kept)
    [v] = rejected
    assert v.reason == Reason.IDENTITY_MISMATCH and v.hit.measures["clip_identity_distance"] > 0.6
    few, none = IdentityStage(FaceConfig(), FilterConfig(min_identity_windows=10))(hits)
    assert len(few) == 6 and none == [] and "clip_identity_distance" not in few[0].measures


# -- extras ------------------------------------------------------------------------------------------------------


def test_sample_maker_writes_the_window_the_crop_and_every_measure(media):
    speech = read_wav(media.speech16k)[: 4 * W]
    clip = Clip("c1", "c1.mp4", "alice", 1, start=2 * W)
    info = MediaInfo(10.0, 640, 360, 25.0, True, True)
    clip_media = ClipMedia(clip, Source(Path("c1.mp4"), 0, "local"), info, 2 * W, 4 * W)
    cfg = Config(extras=ExtrasConfig(face_sizes=(64,), mel=True, augment=2))
    crop = np.asarray(Image.fromarray(astronaut().image).resize((224, 224)))
    face = Face((10, 20, 110, 120), [[1, 2]] * 5, 1.5, crop, None, 2, SpeakerChoice.HINT, np.ones(128, np.float32))
    hit = FaceHit(window(1, snr_db=30.0), 3.5, face, {"snr_db": 30.0, "sharpness": 50.0})
    sample = SampleMaker(clip_media, ClipAudio(speech, speech), "train", cfg)(hit)
    assert sample.key == "c1-00001"
    assert set(sample.members) == {"wav", "jpg", "face64.jpg", "mel.npy", "aug.npy", "dlib.npy"}
    assert np.array_equal(read_wav(sample.members["wav"]), speech[W : 2 * W])
    meta = json.loads(sample.encoded()["json"])
    assert (meta["window_start"], meta["window_end"], meta["frame_time"]) == (3.0, 4.0, 3.5)
    assert meta["speaker_choice"] == "hint" and meta["sharpness"] == 50.0 and meta["split"] == "train"
    assert np.load(io.BytesIO(sample.members["aug.npy"])).shape == (2, W)


# -- source ------------------------------------------------------------------------------------------------------


def test_source_stage_places_the_clip_on_the_files_timeline(media, tmp_path):
    stage = SourceStage(Config().download, tmp_path)
    got = stage(Clip("c1", str(media.moving), "p", 1, start=2 * W, end=5 * W))
    assert (got.file_start, got.duration, got.source.kind) == (2 * W, 3 * W, "local")
    with pytest.raises(ClipError) as err:
        stage(Clip("c2", str(media.moving), "p", 1, start=60 * W))
    assert err.value.reason == Reason.SEGMENT_OUT_OF_RANGE
    with pytest.raises(ClipError) as err:
        stage(Clip("c3", str(tmp_path / "missing.mp4"), "p", 1))
    assert err.value.reason == Reason.FILE_NOT_FOUND


# -- decode ------------------------------------------------------------------------------------------------------


def test_decode_stage_gives_the_clips_audio_and_tiles_a_short_one_when_asked(media, tmp_path):
    from pipeline.stages.decode import decode_clip_audio

    stage = SourceStage(Config().download, tmp_path)
    clip_media = stage(Clip("c1", str(media.moving), "p", 1, start=2 * W, end=5 * W))
    audio = decode_clip_audio(clip_media, Config())
    assert len(audio.samples) == 3 * W and audio.tiled_from is None and audio.original is audio.samples
    source = read_wav(media.speech16k).astype(np.float64)
    assert abs(best_lag(audio.samples[:W].astype(np.float64), source, 2 * W) - 2 * W) <= 320  # the clip, not the file
    short = stage(Clip("c2", str(media.short), "p", 1))
    tiled = decode_clip_audio(short, Config(extras=ExtrasConfig(tile_short=True)))
    n = len(tiled.original)
    assert 0 < n < W and tiled.tiled_from == n and len(tiled.samples) == W
    assert np.array_equal(tiled.samples[n : 2 * n], tiled.original[: min(n, W - n)]) or 2 * n > W
    assert decode_clip_audio(short, Config()).tiled_from is None
