"""Quality filters: each has generated media that passes and media that fails with its exact reason code."""

import io
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config
from pipeline.demo.synth import Placement, astronaut, grace_hopper, talking_head
from pipeline.faces import SpeakerTracker
from pipeline.quality import NOSE_DEPTH, NOSE_DROP, clipping, head_pose, out_of_frame, snr_db
from pipeline.records import Clip
from pipeline.report import RunReport
from pipeline.tars import read_samples
from tests.conftest import H, W

LENIENT = {"min_det_score": -10, "min_sharpness": 0, "max_yaw_deg": 90, "max_pitch_deg": 90, "max_out_of_frame": 1}


def ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *map(str, args)], check=True)


@dataclass
class FilterMedia:
    base: Path  # astronaut, 120 px, centred, 4 s of speech
    blurred: Path
    edge: Path  # the face a third out of the frame's left edge
    loud: Path  # the speech amplified 30x: clipped
    noisy: Path  # speech under loud white noise
    cutaway: Path  # 4 s of the astronaut, then a cut to 2 s of Grace Hopper at the same place
    music: Path  # the astronaut over a chord track with a melody (no speech)
    speech_over_music: Path  # the speech with the same music 12 dB under it


@pytest.fixture(scope="module")
def fm(media, tmp_path_factory) -> FilterMedia:
    d = tmp_path_factory.mktemp("filters")
    a, g = astronaut(), grace_hopper()
    base = talking_head(d / "base.mp4", [Placement(a, 120, W / 2, H / 2)], 4, media.speech16k, size=(W, H))
    other = talking_head(d / "other.mp4", [Placement(g, 120, W / 2, H / 2)], 2, media.speech16k, size=(W, H))
    talking_head(d / "edge.mp4", [Placement(a, 120, 25, H / 2)], 4, media.speech16k, size=(W, H))
    ffmpeg("-i", base, "-vf", "boxblur=5:2", "-c:a", "copy", d / "blurred.mp4")
    ffmpeg("-i", base, "-af", "volume=30", "-c:v", "copy", d / "loud.mp4")
    ffmpeg(
        "-i",
        base,
        "-f",
        "lavfi",
        "-i",
        "anoisesrc=a=0.3:c=white:r=16000",
        "-filter_complex",
        "[0:a][1:a]amix=inputs=2:duration=first[a]",
        "-map",
        "0:v",
        "-map",
        "[a]",
        "-c:v",
        "copy",
        d / "noisy.mp4",
    )
    ffmpeg("-i", base, "-i", other, "-filter_complex", "[0:v][0:a][1:v][1:a]concat=n=2:v=1:a=1[v][a]",
           "-map", "[v]", "-map", "[a]", d / "cutaway.mp4")  # fmt: skip
    # chords pulsing twice a second under a four-note melody: webrtcvad calls all of it speech
    chords = "0.2*(sin(2*PI*261.6*t)+sin(2*PI*329.6*t)+sin(2*PI*392*t))*(0.5+0.5*sin(2*PI*2*t))"
    melody = "0.15*sin(2*PI*(440+220*floor(mod(t*4,4)))*t)"
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc='{chords}+{melody}':s=16000:d=4", d / "music.wav")
    talking_head(d / "music.mp4", [Placement(a, 120, W / 2, H / 2)], 4, d / "music.wav", size=(W, H))
    ffmpeg("-i", base, "-i", d / "music.wav", "-filter_complex",
           "[1:a]volume=0.25[m];[0:a][m]amix=inputs=2:duration=first:normalize=0[a]",
           "-map", "0:v", "-map", "[a]", "-c:v", "copy", d / "speech_over_music.mp4")  # fmt: skip
    return FilterMedia(base, d / "blurred.mp4", d / "edge.mp4", d / "loud.mp4", d / "noisy.mp4", d / "cutaway.mp4",
                       d / "music.mp4", d / "speech_over_music.mp4")  # fmt: skip


def run(path, tmp_path, **filters):
    ctx = BuildContext(out=tmp_path / "out", cfg=Config.from_dict({"filters": filters}))
    s = run_clip(Clip("c1", str(path), "person", 1), ctx)
    samples = list(read_samples(ctx.clip_tar("c1"))) if s.status == "ok" else []
    return s, [json.loads(x["json"]) for x in samples]


def test_clean_media_passes_every_filter_and_records_the_measures(fm, tmp_path):
    s, metas = run(fm.base, tmp_path)
    assert (s.status, s.window_rejections, s.windows_written) == ("ok", {}, 4)
    for m in metas:
        for key in ("sharpness", "yaw", "pitch", "roll", "out_of_frame", "clipping", "snr_db", "det_score"):
            assert key in m
        assert m["clipping"] == 0 and m["snr_db"] > 8 and m["out_of_frame"] == 0 and abs(m["yaw"]) < 20


@pytest.mark.parametrize(
    "name, filters, reason",
    [
        ("blurred", {}, "blurry"),  # sharpness ~3 against ~90 for the sharp face
        ("blurred", {**LENIENT, "min_det_score": 0.5}, "low_face_score"),  # the blur also weakens HOG's score
        ("edge", {}, "face_out_of_frame"),
        ("base", {"max_yaw_deg": 0.5}, "bad_pose"),  # the photo looks ~3 degrees aside
        ("loud", {}, "clipping"),
        ("noisy", {}, "low_snr"),
        ("music", {}, "music_or_noise"),
    ],
)
def test_failing_media_gets_the_filter_reason(fm, tmp_path, name, filters, reason):
    s, _ = run(getattr(fm, name), tmp_path, **filters)
    assert (s.status, s.reason, s.windows_written) == ("rejected", reason, 0)
    assert s.window_rejections[reason] >= 3


def test_music_passes_webrtcvad_and_is_caught_by_the_neural_vad(fm, tmp_path):
    off, metas = run(fm.music, tmp_path / "off", music_noise=False)
    assert off.status == "ok" and off.windows_written >= 3  # webrtcvad and the other filters keep it
    assert all("neural_speech" not in m for m in metas)
    s, _ = run(fm.music, tmp_path / "on")
    assert s.status == "rejected" and s.window_rejections["music_or_noise"] == off.windows_written
    s, metas = run(fm.speech_over_music, tmp_path / "speech")  # speech with music under it is speech
    assert s.status == "ok" and s.windows_written >= 3 and "music_or_noise" not in s.window_rejections
    assert all(m["neural_speech"] >= 0.5 for m in metas)


def test_filters_pass_the_same_media_at_lenient_thresholds(fm, tmp_path):
    for name in ("blurred", "edge"):
        s, _ = run(getattr(fm, name), tmp_path / name, **LENIENT)
        assert s.status == "ok" and s.windows_written >= 3, name
    s, _ = run(fm.loud, tmp_path / "loud", max_clipping=0.5, min_snr_db=0)
    assert s.status == "ok"


def test_a_cutaway_to_another_person_is_removed_and_the_speaker_kept(fm, tmp_path):
    s, metas = run(fm.cutaway, tmp_path)
    assert s.status == "ok" and s.window_rejections == {"identity_mismatch": 2}
    assert sorted(m["window_index"] for m in metas) == [0, 1, 2, 3]  # the astronaut's windows
    assert all(m["clip_identity_distance"] < 0.3 for m in metas)
    r = RunReport()
    r.add_status(s)
    funnel = dict(r.funnel_rows())
    assert (funnel["good faces"], funnel["same identity"], funnel["written"]) == (6, 4, 4)


def test_the_funnel_counts_every_filter():
    from pipeline.records import ClipStatus

    r = RunReport()
    rejections = {"no_speech": 1, "clipping": 1, "low_snr": 1, "no_face": 1, "blurry": 1, "bad_pose": 1,
                  "low_face_score": 1, "face_out_of_frame": 1, "identity_mismatch": 1, "av_unsynced": 1}  # fmt: skip
    r.add_status(ClipStatus("c", "ok", windows_total=13, windows_written=3, window_rejections=rejections,
                            window_flags={"av_unsynced": 2}))  # fmt: skip
    assert dict(r.funnel_rows()) == {
        "manifest rows": 1, "clips": 1, "resolved": 1, "decoded": 1, "windows": 13, "speech windows": 12,
        "clean audio": 10, "faces": 9, "good faces": 5, "same identity": 4, "in sync": 3, "written": 3,
    }  # fmt: skip
    assert r.window_flags == {"av_unsynced": 2}
    assert "flagged av_unsynced (kept) | 2" in r.markdown({"samples": 3, "shards": {}, "seconds": 0})


def project(yaw_deg: float, pitch_deg: float) -> list[list[float]]:
    """dlib's 5 landmarks of the head model turned by yaw and pitch, orthographically projected (100 px eyes)."""
    pts = np.array([[0.7, 0, 0], [0.3, 0, 0], [-0.7, 0, 0], [-0.3, 0, 0], [0, NOSE_DROP, NOSE_DEPTH]]) * 100
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return ((pts @ (rx @ ry).T)[:, :2] + [320, 180]).tolist()


@pytest.mark.parametrize("yaw, pitch", [(0, 0), (30, 0), (-60, 0), (0, 25), (0, -20), (20, 15)])
def test_head_pose_recovers_the_model_angles(yaw, pitch):
    y, p, _ = head_pose(project(yaw, pitch))
    tolerance = 3 if yaw == 0 or pitch == 0 else 6  # together, the turned eye line reads as some roll
    assert abs(y - yaw) < tolerance and abs(p - pitch) < tolerance


def test_head_pose_of_a_photo_and_its_mirror(media):
    photo = astronaut().image
    tracker = SpeakerTracker(Config().faces, None)
    face, mirrored = tracker(photo), SpeakerTracker(Config().faces, None)(np.ascontiguousarray(photo[:, ::-1]))
    y1, p1, r1 = head_pose(face.landmarks5)
    y2, p2, r2 = head_pose(mirrored.landmarks5)
    assert abs(y1) < 20 and abs(y1 + y2) < 4 and abs(p1 - p2) < 4 and abs(r1 + r2) < 4


def test_audio_measures():
    rng = np.random.default_rng(0)
    bursts = np.zeros(16000)
    bursts[2000:6000] = bursts[9000:13000] = 8000
    tone = (bursts * np.sin(np.arange(16000) * 0.3)).astype(np.int16)
    assert clipping(tone) == 0 and snr_db(tone) == 100.0
    assert clipping(np.clip(tone.astype(np.int32) * 10, -32768, 32767).astype(np.int16)) > 0.3
    assert snr_db((tone + rng.normal(0, 8000, 16000)).clip(-32768, 32767).astype(np.int16)) < 8
    assert out_of_frame((-60, 0, 60, 120), 640, 360) == 0.5 and out_of_frame((10, 10, 70, 70), 640, 360) == 0


def test_leakage_reports_near_duplicate_faces_across_splits():
    rng = np.random.default_rng(0)
    person, other = rng.normal(0, 0.1, 128), rng.normal(0, 0.1, 128)
    r = RunReport()

    def add(split, identity, vec):
        buf = io.BytesIO()
        np.save(buf, vec.astype(np.float32))
        r.add_embedding({"split": split, "identity": identity}, buf.getvalue())

    for _ in range(3):  # one person under two identities (two channels), in train and in test
        add("train", "chan_a", person + rng.normal(0, 0.01, 128))
        add("test", "chan_b", person + rng.normal(0, 0.01, 128))
        add("val", "someone", other)
    add("train", "chan_a2", person)  # the same split: not leakage
    leak = r.check_leakage(0.4)
    assert leak["pairs"] == 2 and leak["identities_checked"] == {"test": 1, "train": 2, "val": 1}
    assert {tuple(leak["examples"][0]["a"]), tuple(leak["examples"][0]["b"])} <= {
        ("test", "chan_b"), ("train", "chan_a"), ("train", "chan_a2"),
    }  # fmt: skip
    assert "Leakage across splits" in r.html({}) and "chan_b" in r.html({})
    r2 = RunReport()
    r2.restore_sample_state(r.sample_state())
    assert r2.leakage == leak
