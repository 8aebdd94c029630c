"""One clip end to end through run_clip: every bad input gets its exact reason, good ones align."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config, FaceConfig
from pipeline.demo.synth import face_centre_at
from pipeline.records import Clip
from pipeline.tars import read_samples
from tests.conftest import best_lag, read_wav


def ctx_for(tmp_path, **faces):
    return BuildContext(out=tmp_path / "out", cfg=Config(faces=FaceConfig(**faces)))


def run(path, tmp_path, clip_id="c1", start=None, end=None, hint=None, **faces):
    x, y = hint or (None, None)
    c = Clip(clip_id, str(path), "person", 1, start=start, end=end, x=x, y=y)
    ctx = ctx_for(tmp_path, **faces)
    return run_clip(c, ctx), ctx


@pytest.mark.parametrize(
    "name, status, reason",
    [
        ("truncated", "rejected", "corrupt_media"),
        ("not_video", "rejected", "corrupt_media"),
        ("no_audio", "rejected", "no_audio"),
        ("coffee", "rejected", "no_face"),
        ("silence", "rejected", "no_speech"),
        ("short", "rejected", "too_short"),
        ("small_face", "rejected", "face_too_small"),
    ],
)
def test_bad_inputs_get_their_reason(media, tmp_path, name, status, reason):
    s, ctx = run(getattr(media, name), tmp_path)
    assert (s.status, s.reason, s.windows_written) == (status, reason, 0)
    assert not ctx.clip_tar("c1").exists()
    # the status is recorded on disk, so a re-run does not redo it
    assert json.loads(ctx.clip_status_path("c1").read_text())["reason"] == reason


def test_missing_file_fails(tmp_path):
    s, _ = run(tmp_path / "nope.mp4", tmp_path)
    assert (s.status, s.reason) == ("failed", "file_not_found")


def test_segment_past_the_end_is_rejected(media, tmp_path):
    s, _ = run(media.moving, tmp_path, start=20 * 16000, end=22 * 16000)
    assert (s.status, s.reason) == ("rejected", "segment_out_of_range")


def test_a_bug_raises_and_the_orchestrator_records_it(media, tmp_path, monkeypatch):
    import pipeline.stages.source
    from pipeline.clip import record_crash

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(pipeline.stages.source, "probe", boom)
    c = Clip("c1", str(media.moving), "person", 1)
    ctx = ctx_for(tmp_path)
    with pytest.raises(ZeroDivisionError):
        run_clip(c, ctx)
    s = record_crash(c, ctx, ZeroDivisionError("bug"))
    assert (s.status, s.reason) == ("failed", "internal_error") and "ZeroDivisionError" in s.detail
    assert json.loads(ctx.clip_status_path("c1").read_text())["reason"] == "internal_error"


def test_samples_align_face_and_audio_with_the_source(media, tmp_path):
    """The face bbox at frame_time is where the moving face is then, and the window's audio is the
    source's audio at window_start, on the source timeline (the clip starts at 1.5 s)."""
    s, ctx = run(media.moving, tmp_path, start=24000, end=8 * 16000)
    assert s.status == "ok" and s.windows_written >= 5
    source = read_wav(media.speech16k).astype(np.float64)
    for sample in read_samples(ctx.clip_tar("c1")):
        meta = json.loads(sample["json"])
        k = meta["window_index"]
        assert sample["__key__"] == f"c1-{k:05d}"
        assert meta["window_start"] == pytest.approx(1.5 + k, abs=1e-6)
        assert meta["window_end"] == pytest.approx(2.5 + k, abs=1e-6)
        assert abs(meta["frame_time"] - (meta["window_start"] + 0.5)) <= 0.04 + 1e-6
        # where the face really was at frame_time (±0.2 s of motion)
        cx, cy = face_centre_at(media.moving_placement, meta["frame_time"])
        l, t, r, b = meta["bbox"]
        assert abs((l + r) / 2 - cx) <= 0.2 * 40 + 6 and abs((t + b) / 2 - cy) <= 8
        # the window's audio sits at window_start in the source speech (±20 ms)
        audio = read_wav(sample["wav"]).astype(np.float64)
        assert len(audio) == 16000
        expected = round(meta["window_start"] * 16000)
        assert abs(best_lag(audio, source, expected) - expected) <= 320
        crop = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        assert crop.shape == (224, 224, 3)
        assert np.load(io.BytesIO(sample["dlib.npy"])).shape == (128,)


def test_hint_picks_the_face_on_the_right(media, tmp_path):
    s, ctx = run(media.two_faces, tmp_path, hint=(480 / 640, 0.5))
    assert s.status == "ok" and s.speaker_choice == "hint"
    for sample in read_samples(ctx.clip_tar("c1")):
        l, _, r, _ = json.loads(sample["json"])["bbox"]
        assert l > 320


def test_embeddings_can_be_turned_off(media, tmp_path):
    s, ctx = run(media.stereo48k, tmp_path, embeddings=False)
    samples = list(read_samples(ctx.clip_tar("c1")))
    assert s.status == "ok" and samples and all("dlib.npy" not in x for x in samples)


def test_every_rejected_window_is_kept_as_data_with_its_crop(media, tmp_path):
    from pipeline.build import add_rejected_examples
    from pipeline.config import FilterConfig
    from pipeline.report import RunReport

    cfg = Config(filters=FilterConfig(min_sharpness=1e9))  # every face is "blurry"
    c = Clip("c1", str(media.moving), "person", 1)
    ctx = BuildContext(tmp_path / "out", cfg)
    s = run_clip(c, ctx)
    assert (s.status, s.reason) == ("rejected", "blurry") and not ctx.clip_tar("c1").exists()
    records = [json.loads(line) for line in ctx.rejected_log("c1").read_text().splitlines()]
    assert len(records) == s.windows_total == 8  # every window: no speech, blurry or otherwise, one line each
    by_reason: dict[str, int] = {}
    for r in records:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    assert by_reason == s.window_rejections
    blurry = [r for r in records if r["reason"] == "blurry"]
    assert blurry and all(r["sample"] and r["measures"]["sharpness"] < 1e9 and "frame_time" in r for r in blurry)
    samples = {x["__key__"]: x for x in read_samples(ctx.rejected_tar("c1"))}
    assert set(samples) == {r["key"] for r in blurry}  # the whole sample, so a reviewer can rescue it
    for r in blurry:
        x = samples[r["key"]]
        assert {"wav", "jpg", "json", "dlib.npy"} <= set(x) and json.loads(x["json"])["window_index"] == r[
            "window_index"
        ]
        assert Image.open(io.BytesIO(x["jpg"])).size == (224, 224)
    report = RunReport()
    report.add_status(s)
    add_rejected_examples(ctx, "c1", report)
    assert [k for k, _, _ in report.window_examples["blurry"]] == [r["key"] for r in blurry][
        : report.examples_per_reason
    ]
    html = report.html({})
    assert html.count("title='c1-0") == len(report.window_examples["blurry"]) and "example crops" in html
