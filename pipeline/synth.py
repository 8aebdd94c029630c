"""Real media for the demo, the tests and the benchmark, made offline: public-domain face photos that ship
in pip packages, speech from espeak-ng, composed and encoded by ffmpeg (H.264 + AAC, faststart mp4)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Public-domain text (Lincoln, 1863) read by espeak-ng: long enough to loop into any clip length.
SPEECH_TEXT = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal. "
    "Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived "
    "and so dedicated, can long endure. We are met on a great battle-field of that war."
)


@dataclass(frozen=True)
class Photo:
    image: np.ndarray  # RGB uint8
    face_box: tuple[int, int, int, int]  # left, top, right, bottom of the face in the photo (dlib HOG)
    name: str


def astronaut() -> Photo:
    """Eileen Collins, NASA portrait (public domain), from scikit-image."""
    from skimage.data import astronaut as load

    return Photo(load(), (179, 83, 267, 171), "astronaut")


def grace_hopper() -> Photo:
    """Grace Hopper, US Navy portrait (public domain), from matplotlib's sample data."""
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB"))
    return Photo(img, (161, 137, 377, 353), "grace_hopper")


def no_face() -> Photo:
    """A cup of coffee (public domain, scikit-image): a picture with no face in it."""
    from skimage.data import coffee

    img = coffee()
    return Photo(img, (0, 0, img.shape[1], img.shape[0]), "coffee")  # "face" = the whole picture


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: `sudo apt-get install -y espeak-ng` (make does it for you)")
    return exe


def speech_wav(path: Path, voice: str = "en-us", text: str = SPEECH_TEXT, speed: int = 150) -> Path:
    """Synthesise speech with espeak-ng (22.05 kHz mono WAV)."""
    subprocess.run([require_espeak(), "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


@dataclass(frozen=True)
class Placement:
    photo: Photo
    face_px: int  # the face's width in the video frame
    x: float  # face centre at t=0, in frame pixels
    y: float
    vx: float = 0.0  # pixels per second, horizontal motion


def face_centre_at(p: Placement, t: float) -> tuple[float, float]:
    return p.x + p.vx * t, p.y


def talking_head(
    out: Path,
    placements: list[Placement],
    seconds: float,
    audio: Path | None,
    size: tuple[int, int] = (854, 480),
    fps: int = 25,
    audio_rate: int = 44100,
    channels: int = 2,
    faststart: bool = True,
) -> Path:
    """Encode an mp4 in which each photo's face sits at (x + vx*t, y) with width face_px, over the audio
    (looped to length; None writes no audio stream)."""
    w, h = size
    with tempfile.TemporaryDirectory() as tmp:
        inputs = ["-f", "lavfi", "-i", f"color=c=0x3a4450:s={w}x{h}:r={fps}:d={seconds}"]
        chain, last = [], "0:v"
        for i, p in enumerate(placements):
            l, t, r, b = p.photo.face_box
            scale = p.face_px / (r - l)
            img = Image.fromarray(p.photo.image)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
            png = Path(tmp) / f"p{i}.png"
            img.save(png)
            fx, fy = (l + r) / 2 * scale, (t + b) / 2 * scale
            inputs += ["-loop", "1", "-framerate", str(fps), "-i", str(png)]
            x0, y0 = p.x - fx, p.y - fy
            chain.append(f"[{last}][{i + 1}:v]overlay=x='{x0:.3f}+{p.vx:.3f}*t':y={y0:.3f}:shortest=1[v{i}]")
            last = f"v{i}"
        n_in = len(placements) + 1
        cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error", *inputs]
        if audio is not None:
            cmd += ["-stream_loop", "-1", "-i", str(audio)]
        vf = ";".join(chain) if chain else "[0:v]null[v]"
        last = last if chain else "v"
        cmd += ["-filter_complex", vf, "-map", f"[{last}]"]
        if audio is not None:
            cmd += [
                "-map",
                f"{n_in}:a",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-ar",
                str(audio_rate),
                "-ac",
                str(channels),
            ]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-r", str(fps)]
        cmd += ["-t", f"{seconds}"]
        if faststart:
            cmd += ["-movflags", "+faststart"]
        cmd += [str(out)]
        subprocess.run(cmd, check=True)
    return out


def silence_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono",
         "-t", str(seconds), str(path)],
        check=True,
    )  # fmt: skip
    return path
