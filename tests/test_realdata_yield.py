"""Yield on the real single-speaker talking heads of ../shared/data/realvids (benchmarks/bench_yield_real.py), and
the blur band on the same faces genuinely blurred. Skipped without the data."""

import subprocess

import pytest

from benchmarks.bench_yield_real import build, measure, single_speaker_clips, window_fates, write_manifest
from tests.conftest import SHARED_DATA, requires_shared_data

pytestmark = [pytest.mark.realdata, requires_shared_data]
REALVIDS = SHARED_DATA / "realvids"


def test_most_speech_seconds_of_real_talking_heads_become_samples(tmp_path):
    clips = single_speaker_clips(REALVIDS)
    assert len(clips) == 8
    out = tmp_path / "out"
    build(write_manifest(clips, tmp_path / "manifest.csv"), out)
    m = measure(out, clips)
    # every speech second is either in the shards or counted under one fate
    assert abs(m["written_speech_s"] + sum(m["lost_s"].values()) - m["speech_s"]) < 0.05
    assert m["speech_s"] > 45
    assert m["yield"] >= 0.80, m["lost_s"]
    # none of these unblurred faces is held back as blurry
    assert not [f for f in m["lost_s"] if f.startswith("held:") and "blurry" in f], m["lost_s"]


# ffmpeg gblur sigma 4 on these 512-844 px frames is about 3 px of the 224 crop: eyelids, nostrils and lips smeared
BLURRED = ("sadtalker_WDA_KatieHill", "vretalk_1", "vretalk_2", "vretalk_5", "liveportrait_d11")


def test_genuinely_blurred_real_faces_are_held_back_or_rejected(tmp_path):
    """The same real faces blurred at the source, the highest-contrast ones (Katie Hill, vretalk_5) among them:
    no window reaches the shards, and the review band (not another filter) is what holds most of them."""
    clips = []
    for name in BLURRED:
        dst = tmp_path / f"{name}_blurred.mp4"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(REALVIDS / f"{name}.mp4"), "-vf", "gblur=sigma=4",
             "-c:v", "libx264", "-crf", "18", "-preset", "veryfast", "-c:a", "copy", str(dst)],
            check=True,
        )  # fmt: skip
        clips.append(dst)
    out = tmp_path / "out"
    build(write_manifest(clips, tmp_path / "manifest.csv"), out)
    fates = [f for per_clip in window_fates(out).values() for f in per_clip.values()]
    faced = [f for f in fates if f not in ("rejected:no_speech", "rejected:music_or_noise")]
    assert len(faced) >= 20
    assert "written" not in fates, fates
    held_blurry = [f for f in faced if f.startswith("held:") and "blurry" in f]
    assert len(held_blurry) + faced.count("rejected:blurry") == len(faced), fates
