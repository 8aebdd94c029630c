"""Quality filters: pure measures of a face or a window, and the reason code a measure over its threshold gives.

Every measure is written into the sample's json, so the review queue and the report can use it.
"""

from __future__ import annotations

import math

import numpy as np

from .config import FilterConfig
from .reasons import Reason

# Head model for the pose estimate, in units of the distance between the eye centres (typical adult faces):
NOSE_DEPTH = 0.5  # the base of the nose lies this far in front of the eyes' plane
NOSE_DROP = 0.68  # ... and this far below the eye line, seen frontally


def _centre(grey: np.ndarray) -> np.ndarray:
    g = np.asarray(grey, dtype=np.float32)
    h, w = g.shape
    return g[h // 4 : h - h // 4, w // 4 : w - w // 4]


def _laplacian(c: np.ndarray) -> np.ndarray:
    return c[1:-1, 2:] + c[1:-1, :-2] + c[2:, 1:-1] + c[:-2, 1:-1] - 4 * c[1:-1, 1:-1]


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a grey crop's central half (the face, not the padding around it)."""
    return float(_laplacian(_centre(grey)).var())


def relative_sharpness(grey: np.ndarray) -> float:
    """sharpness() over the variance of the same pixels: fine detail against the face's own contrast. It does not
    change when contrast does (a soft-lit or low-contrast face is not a blurred one), and a Gaussian blur of sigma
    px lowers it about as sigma^-4 (natural images), so it tells blur from contrast where sharpness() cannot."""
    c = _centre(grey)
    return float(_laplacian(c).var() / max(float(c.var()), 1e-6))


def grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as PIL's convert("L")."""
    return np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def head_pose(landmarks5) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from dlib's 5 landmarks (4 eye corners and the base of the nose).

    The eye line gives the roll; after undoing it, the nose's offset from the eyes' midpoint, over the
    distance between the eye centres, is read through a rigid head model (NOSE_DEPTH, NOSE_DROP):
    sideways it is NOSE_DEPTH * tan(yaw), downwards (NOSE_DROP * cos(pitch) - NOSE_DEPTH * sin(pitch)) / cos(yaw).
    A rough estimate (about ±10°), enough to drop profiles and faces looking far up or down.
    """
    p = np.asarray(landmarks5, dtype=np.float64)
    a, b = p[0:2].mean(0), p[2:4].mean(0)
    left, right = (a, b) if a[0] <= b[0] else (b, a)  # image left and right
    eye_vec = right - left
    iod = float(np.hypot(*eye_vec)) or 1.0
    roll = math.atan2(eye_vec[1], eye_vec[0])
    c, s = math.cos(-roll), math.sin(-roll)
    d = p[4] - (left + right) / 2
    dx, dy = (c * d[0] - s * d[1]) / iod, (s * d[0] + c * d[1]) / iod
    yaw = math.degrees(math.atan(dx / NOSE_DEPTH))
    dy *= math.cos(math.radians(yaw))  # the eyes look closer together by cos(yaw); the drop does not shrink
    r = math.hypot(NOSE_DROP, NOSE_DEPTH)
    pitch = math.degrees(math.acos(max(-1.0, min(1.0, dy / r))) - math.atan2(NOSE_DEPTH, NOSE_DROP))
    return round(yaw, 1), round(pitch, 1), round(math.degrees(roll), 1)


def out_of_frame(bbox, width: int, height: int) -> float:
    """Share of the face box's area that lies outside the frame."""
    l, t, r, b = bbox
    area = max(1, (r - l) * (b - t))
    inside = max(0, min(r, width) - max(l, 0)) * max(0, min(b, height) - max(t, 0))
    return round(1.0 - inside / area, 4)


def face_measures(face, frame_wh: tuple[int, int]) -> dict:
    """What the face filters look at, for the sample json."""
    yaw, pitch, roll = head_pose(face.landmarks5)
    return {
        "sharpness": round(sharpness(g := grey(face.crop)), 2),
        "relative_sharpness": round(relative_sharpness(g), 4),
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "out_of_frame": out_of_frame(face.bbox, *frame_wh),
    }


def face_reason(det_score: float, m: dict, cfg: FilterConfig) -> Reason | None:
    """The first face filter a face fails, or None."""
    if det_score < cfg.min_det_score:
        return Reason.LOW_FACE_SCORE
    if m["out_of_frame"] > cfg.max_out_of_frame:
        return Reason.FACE_OUT_OF_FRAME
    if abs(m["yaw"]) > cfg.max_yaw_deg or abs(m["pitch"]) > cfg.max_pitch_deg:
        return Reason.BAD_POSE
    if m["sharpness"] < cfg.min_sharpness:
        return Reason.BLURRY
    return None


def clipping(audio: np.ndarray) -> float:
    """Share of samples at (or one step from) full scale."""
    if len(audio) == 0:
        return 0.0
    return round(float(np.mean(np.abs(audio.astype(np.int32)) >= 32766)), 5)


def snr_db(audio: np.ndarray, frame: int = 320) -> float:
    """A blind SNR estimate: the 95th over the 10th percentile of 20 ms frame energies, in dB (capped at 100).

    Speech has pauses and weak phones, so its quiet frames show the noise floor; steady noise raises them."""
    n = len(audio) // frame
    if n < 2:
        return 0.0
    e = (audio[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(1)
    hi, lo = np.percentile(e, 95), np.percentile(e, 10)
    return round(float(min(100.0, 10 * np.log10((hi + 1e-3) / (lo + 1e-3)))), 2)


def speech_reason(
    clip_share: float, snr: float, cfg: FilterConfig, neural_speech: float | None = None
) -> Reason | None:
    """The first speech filter a window fails, or None (`neural_speech`: Silero VAD's speech share, if measured)."""
    if clip_share > cfg.max_clipping:
        return Reason.CLIPPING
    if snr < cfg.min_snr_db:
        return Reason.LOW_SNR
    if neural_speech is not None and neural_speech < cfg.min_neural_speech:
        return Reason.MUSIC_OR_NOISE
    return None


def medoid_distances(vectors: np.ndarray, max_ref: int = 400) -> np.ndarray:
    """Each vector's distance to the medoid; the medoid is sought among at most `max_ref` evenly spaced ones.

    A medoid rather than the mean: when a wrong face makes up a third of an identity, the mean lies between
    the two faces and flags neither; the medoid stays on the majority's face.
    """
    ref = vectors[np.linspace(0, len(vectors) - 1, min(len(vectors), max_ref)).round().astype(int)]
    sq = (ref**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * ref @ ref.T, 0))
    medoid = ref[d.sum(1).argmin()]
    return np.linalg.norm(vectors - medoid, axis=1)
