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


def scaled_photo(p: Placement) -> tuple[Image.Image, float]:
    """The placement's photo resized so that its face is face_px wide, and the scale applied."""
    l, _, r, _ = p.photo.face_box
    scale = p.face_px / (r - l)
    img = Image.fromarray(p.photo.image)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS), scale


H264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]  # the encode of all media


def aac(rate: int, channels: int) -> list[str]:
    return ["-c:a", "aac", "-b:a", "96k", "-ar", str(rate), "-ac", str(channels)]


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
            img, scale = scaled_photo(p)
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
            cmd += ["-map", f"{n_in}:a", *aac(audio_rate, channels)]
        cmd += [*H264, "-r", str(fps)]
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


def wav_envelope(path: Path, times: np.ndarray) -> np.ndarray:
    """Loudness of a 16-bit WAV at `times` (seconds, wrapping past its end as ffmpeg's -stream_loop does),
    scaled to [0, 1] between its 10th and 95th percentile levels: how far a speaker's mouth would be open."""
    import wave

    with wave.open(str(path)) as w:
        rate, n = w.getframerate(), w.getnframes()
        x = np.frombuffer(w.readframes(n), np.int16).reshape(-1, w.getnchannels())[:, 0].astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    half = int(0.02 * rate)
    c = (np.round(times * rate).astype(np.int64)) % len(x)
    lo, hi = np.clip(c - half, 0, len(x)), np.clip(c + half, 0, len(x))
    db = 10 * np.log10((csum[hi] - csum[lo]) / np.maximum(hi - lo, 1) + 1.0)
    floor, peak = np.percentile(db, 10), np.percentile(db, 95)
    level = np.clip((db - floor) / max(peak - floor, 1e-6), 0, 1)
    return np.convolve(np.pad(level, 1, mode="edge"), np.ones(3) / 3, mode="valid")  # a mouth is not instant


def open_mouth(image: np.ndarray, landmarks68: np.ndarray, gap_px: float) -> np.ndarray:
    """The photo with its jaw dropped by `gap_px`: everything below the lips' meeting line, between the mouth
    corners and down past the chin, moves down (fading out sideways and below), and the gap is the mouth's dark."""
    if gap_px < 0.5:
        return image
    p = np.asarray(landmarks68, dtype=np.float64)
    h, w = image.shape[:2]
    (mx0, _), (mx1, _) = p[48], p[54]
    my = p[[61, 62, 63, 65, 66, 67], 1].mean()
    chin = p[8, 1]
    cx, half = (mx0 + mx1) / 2, (mx1 - mx0) / 2
    x0, x1 = max(0, int(cx - 1.4 * half)), min(w, int(cx + 1.4 * half) + 1)
    y0, y1 = max(0, int(my)), min(h, int(chin + 0.7 * (chin - my)) + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    wx = np.clip(1 - ((xs - cx) / (1.4 * half)) ** 2, 0, 1)
    wy = np.clip(1 - (ys - chin) / (0.7 * (chin - my)), 0, 1)
    sy = ys - gap_px * wx * wy
    out = image.copy()
    patch = image[np.clip(np.round(sy).astype(int), 0, h - 1), xs.astype(int)]
    gap = (sy < my) & (wx > 0.05)
    patch[gap] = (70, 28, 34)
    out[y0:y1, x0:x1] = patch
    return out


def speaking_head(
    out: Path,
    placements: list[Placement] | Photo,
    audio: Path,
    seconds: float,
    speaker: int | None = 0,
    mouth_audio: Path | None = None,
    mouth_offset_s: float = 0.0,
    size: tuple[int, int] = (854, 480),
    fps: int = 25,
    audio_rate: int = 44100,
    channels: int = 2,
) -> Path:
    """Encode an mp4 like talking_head's in which the face of placements[speaker] speaks `audio` (looped): its
    mouth opens with the loudness of `mouth_audio` (default: the same audio, so it is in sync) read
    `mouth_offset_s` later. A different sound or an offset gives a mouth out of sync with what is heard, the
    case the AV-sync score must flag; the other faces listen (their mouths stay still).
    A bare Photo is one 150 px face at the frame's centre."""
    from ..faces import DlibModels

    w, h = size
    if isinstance(placements, Photo):
        placements = [Placement(placements, 150, w / 2, h / 2)]
    faces = []
    for p in placements:
        pil, scale = scaled_photo(p)
        img = np.asarray(pil)
        box = [round(v * scale) for v in p.photo.face_box]
        faces.append((p, img, box, DlibModels.get().landmarks68(img, box)))
    times = np.arange(int(round(seconds * fps))) / fps
    level = wav_envelope(mouth_audio or audio, times + mouth_offset_s)
    background = np.full((h, w, 3), (58, 68, 80), np.uint8)
    cmd = [
        "ffmpeg", "-nostdin", "-y", "-v", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
        "-stream_loop", "-1", "-i", str(audio),
        "-map", "0:v", "-map", "1:a", *aac(audio_rate, channels), *H264,
        "-t", f"{seconds}", "-movflags", "+faststart", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    try:
        for t, lev in zip(times, level, strict=True):
            frame = background.copy()
            for i, (p, img, box, shape) in enumerate(faces):
                face = open_mouth(img, shape, lev * 0.09 * p.face_px) if i == speaker else img
                cx, cy = face_centre_at(p, t)  # the photo's face centre goes there; the photo is cut to the frame
                ox, oy = round(cx - (box[0] + box[2]) / 2), round(cy - (box[1] + box[3]) / 2)
                sx0, sy0 = max(0, -ox), max(0, -oy)
                sx1, sy1 = min(img.shape[1], w - ox), min(img.shape[0], h - oy)
                if sx1 > sx0 and sy1 > sy0:
                    frame[sy0 + oy : sy1 + oy, sx0 + ox : sx1 + ox] = face[sy0:sy1, sx0:sx1]
            proc.stdin.write(frame.tobytes())  # type: ignore[union-attr]
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not encode {out}")
    return out
