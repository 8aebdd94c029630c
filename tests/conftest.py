"""Shared fixtures: real media generated once per session (photos from pip packages, espeak-ng speech,
ffmpeg encoding), a Range-capable HTTP server, and a Prefect test harness."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.demo.synth import Placement, astronaut, grace_hopper, no_face, silence_wav, speech_wav, talking_head
from tests.httpserver import RangeServer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
W, H = 640, 360
MOVING_VX = 40.0  # px/s of the moving-face clip


@dataclass
class Media:
    dir: Path
    speech16k: Path  # mono 16 kHz speech, the audio of `moving`
    moving: Path  # 8 s, one face moving right at MOVING_VX px/s, audio = speech16k
    moving_placement: Placement
    two_faces: Path  # astronaut left, Grace Hopper right, 6 s
    stereo48k: Path  # 5 s, stereo 48 kHz audio
    no_audio: Path
    silence: Path
    coffee: Path  # speech, no face
    short: Path  # 0.6 s
    small_face: Path  # a face ~50 px wide
    truncated: Path  # an mp4 cut in half
    not_video: Path  # text named .mp4


def _mono16k(src: Path, dst: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), "-ac", "1", "-ar", "16000", str(dst)],
                   check=True)  # fmt: skip
    return dst


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Media:
    d = tmp_path_factory.mktemp("media")
    speech = _mono16k(speech_wav(d / "speech22k.wav", voice="en-us+f3"), d / "speech16k.wav")
    a, g = astronaut(), grace_hopper()
    moving = Placement(a, 120, 150, 180, vx=MOVING_VX)
    talking_head(d / "moving.mp4", [moving], 8, speech, size=(W, H))
    talking_head(
        d / "two_faces.mp4",
        [Placement(a, 110, 160, 180), Placement(g, 120, 480, 180)],
        6,
        speech,
        size=(W, H),
    )
    talking_head(d / "stereo48k.mp4", [Placement(g, 130, 320, 180)], 5, speech, size=(W, H), audio_rate=48000)
    talking_head(d / "no_audio.mp4", [Placement(a, 120, 320, 180)], 4, None, size=(W, H))
    talking_head(d / "silence.mp4", [Placement(a, 120, 320, 180)], 4, silence_wav(d / "sil.wav", 4), size=(W, H))
    talking_head(d / "coffee.mp4", [Placement(no_face(), 200, 320, 180)], 4, speech, size=(W, H))
    talking_head(d / "short.mp4", [Placement(a, 120, 320, 180)], 0.6, speech, size=(W, H))
    talking_head(d / "small_face.mp4", [Placement(a, 50, 320, 180)], 4, speech, size=(W, H))
    whole = (d / "moving.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (d / "not_video.mp4").write_text("this is not a video\n")
    return Media(
        d, speech, d / "moving.mp4", moving, d / "two_faces.mp4", d / "stereo48k.mp4", d / "no_audio.mp4",
        d / "silence.mp4", d / "coffee.mp4", d / "short.mp4", d / "small_face.mp4", d / "truncated.mp4",
        d / "not_video.mp4",
    )  # fmt: skip


@pytest.fixture(scope="session")
def http_media(media):
    """The media dir served over HTTP with Range support."""
    with RangeServer(str(media.dir)) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        yield


def read_wav(path_or_bytes) -> np.ndarray:
    import io
    import wave

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb")
    with wave.open(src) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def best_lag(window: np.ndarray, source: np.ndarray, expected: int, search: int = 1600) -> int:
    """The offset in `source` where `window` fits best (normalised correlation), searched around `expected`."""
    n = len(window)
    lags = list(range(max(0, expected - search), min(len(source) - n, expected + search) + 1, 4))
    scores = [np.dot(window, source[g : g + n]) / (np.linalg.norm(source[g : g + n]) + 1e-9) for g in lags]
    return lags[int(np.argmax(scores))]


requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
