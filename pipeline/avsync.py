"""Active speaker / AV sync: is the face we kept the one that speaks, and is its sound in time with it?

A SyncNet-style offset search without SyncNet's weights. A per-frame mouth signal, the inner-lip opening read
from dlib's 68 landmarks on the decoder's grey context frames (one every `av_sync_step_s`, which cover the whole
clip), is cross-correlated with the audio's speech-band loudness at the video's frame rate over audio offsets of
up to `av_sync_max_lag_s` either way (±15 frames at 25 fps). One window (1 s) is too little evidence for that,
so each window is judged on the span of `av_sync_span_s` (6 s) around it, within its shot: the offset with the
highest correlation is the span's AV offset, and its confidence is that peak above the median of all offsets.

- In sync: a clear peak at an offset near 0 (within `av_sync_tolerance_s`).
- Late or early audio: a clear peak at another offset (0.4 s late = +10 frames at 25 fps); beyond the search,
  no clear peak.
- Dubbed audio, a listener, a photo: no clear peak anywhere (a mouth that does not move scores 0).

`av_sync` is the best correlation at an offset within the tolerance above the median over all offsets. A window
is flagged `av_unsynced` when its span's best offset lies outside the tolerance or `av_sync` is under
`min_av_sync`; it is a flag, not a drop, unless the config says so.

Both signals are high-passed (less their 0.5 s moving average), since over several seconds head motion and
loudness drift would otherwise dominate the correlation. The face box of each context frame starts at the
detector's box in its window's face frame and follows the 68 landmarks from frame to frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import SAMPLE_RATE, FilterConfig

BAND_HZ = (300.0, 3000.0)  # speech band of the loudness: the voice's formants, not the room's hum or hiss
HIGHPASS_S = 0.5  # both signals less their moving average over this: only changes faster than syllables count
SMOOTH_S = 0.12  # the mouth signal is smoothed over this (landmark jitter is frame to frame)
MIN_SPAN_S = 2.0  # fewer seconds of mouth signal around a window: no score


def mouth_opening(landmarks68: np.ndarray) -> float:
    """Inner-lip gap (mean of the three vertical pairs 61-67, 62-66, 63-65) over the distance between the eye
    centres, so the measure does not change with the face's size in the frame."""
    p = np.asarray(landmarks68, dtype=np.float64)
    gap = np.linalg.norm(p[[61, 62, 63]] - p[[67, 66, 65]], axis=1).mean()
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    return float(gap / max(iod, 1.0))


def band_loudness(audio: np.ndarray, fps: float, n: int | None = None) -> np.ndarray:
    """Speech-band (BAND_HZ) energy in dB of `audio` (int16, 16 kHz) over one frame's duration centred on
    (j + 0.5) / fps, for j < n (all frames of the audio when n is None): the sound of video frame j."""
    L = max(16, int(round(SAMPLE_RATE / fps)))
    if n is None:
        n = int(len(audio) / SAMPLE_RATE * fps)
    centres = np.round((np.arange(n) + 0.5) / fps * SAMPLE_RATE).astype(np.int64)
    x = np.zeros(len(audio) + 2 * L, np.float32)
    x[L : L + len(audio)] = audio
    idx = centres[:, None] + L - L // 2 + np.arange(L)[None, :]
    frames = x[np.clip(idx, 0, len(x) - 1)] * np.hanning(L).astype(np.float32)
    freqs = np.fft.rfftfreq(L, 1 / SAMPLE_RATE)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    spec = np.abs(np.fft.rfft(frames, axis=1))[:, band] ** 2
    return 10 * np.log10(spec.sum(1) / L + 1.0)


def _moving_mean(x: np.ndarray, w: int) -> np.ndarray:
    pad = np.pad(x, (w // 2, w - 1 - w // 2), mode="edge")
    c = np.concatenate([[0.0], np.cumsum(pad)])
    return (c[w:] - c[:-w]) / w


def highpass(x: np.ndarray, w: int, smooth: int = 1) -> np.ndarray:
    """x smoothed over `smooth` samples, less its moving average over `w` samples (edges held)."""
    x = np.asarray(x, dtype=np.float64)
    if smooth > 1:
        x = _moving_mean(x, smooth)
    return x - _moving_mean(x, max(1, w))


def offset_profile(mouth: np.ndarray, frames: np.ndarray, loud: np.ndarray, max_offset: int) -> np.ndarray:
    """Pearson r of `mouth` (one value per sample, taken at video frame numbers `frames`) with `loud[frames + k]`
    for k = -max_offset..max_offset (k > 0: the sound comes k frames after the picture). Samples whose shifted
    frame lies outside `loud` are left out of that offset's r."""
    ks = np.arange(-max_offset, max_offset + 1)
    j = frames[:, None] + ks[None, :]
    valid = (j >= 0) & (j < len(loud))
    b = np.where(valid, loud[np.clip(j, 0, len(loud) - 1)], 0.0)
    a = np.where(valid, mouth[:, None], 0.0)
    cnt = np.maximum(valid.sum(0), 1)
    a = np.where(valid, a - a.sum(0) / cnt, 0.0)
    b = np.where(valid, b - b.sum(0) / cnt, 0.0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where((den > 0) & (valid.sum(0) >= 3), (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def decide(profile: np.ndarray, fps: float, cfg: FilterConfig) -> dict:
    """The span's measures from its offset profile: av_offset_s (the best offset), av_confidence (its r above the
    median r), av_sync (the best r within the tolerance above the median r) and av_unsynced."""
    K = (len(profile) - 1) // 2
    tol = int(round(cfg.av_sync_tolerance_s * fps))
    med = float(np.median(profile))
    best = int(np.argmax(profile))
    near = float(profile[max(0, K - tol) : K + tol + 1].max())
    sync = near - med
    offset = best - K
    return {
        "av_sync": round(sync, 3),
        "av_offset_s": round(offset / fps, 3),
        "av_confidence": round(float(profile[best]) - med, 3),
        "av_unsynced": bool(abs(offset) > tol or sync < cfg.min_av_sync),
    }


def span_measures(
    times: np.ndarray, openings: np.ndarray, loud: np.ndarray, fps: float, step_s: float, cfg: FilterConfig
) -> dict:
    """The AV-sync measures of one span: mouth openings at `times` (seconds since the audio's start, in time
    order) against `loud` (band_loudness of the audio at `fps`). A still mouth scores 0 and is flagged."""
    out: dict = {"av_sync": None, "av_offset_s": None, "av_confidence": None, "mouth_motion": None,
                 "av_unsynced": False}  # fmt: skip
    if len(times) < 2 or times[-1] - times[0] < MIN_SPAN_S:
        return out
    motion = float(np.std(openings))
    out["mouth_motion"] = round(motion, 4)
    if motion < cfg.min_mouth_motion:
        return {**out, "av_sync": 0.0, "av_confidence": 0.0, "av_unsynced": True}
    step = max(step_s, 1 / fps)
    mouth = np.empty(len(times))
    # filter each run of evenly spaced samples on its own (a window without a face leaves a gap)
    breaks = np.flatnonzero(np.diff(times) > 2.5 * step) + 1
    for run in np.split(np.arange(len(times)), breaks):
        mouth[run] = highpass(openings[run], round(HIGHPASS_S / step) | 1, max(1, round(SMOOTH_S / step)) | 1)
    frames = np.round(times * fps).astype(np.int64)  # a frame shown from t has its sound centred on t + 0.5/fps
    K = int(round(cfg.av_sync_max_lag_s * fps))
    profile = offset_profile(mouth, frames, loud, K)
    return {**out, **decide(profile, fps, cfg)}


@dataclass(eq=False)  # compared by identity: the item may hold arrays
class _Open:
    item: object  # what the caller gets back with the measures
    centre: float
    shot: int


@dataclass
class _Slot:
    """The context frames around one grid frame: buffered until its face is known, then measured."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # the box followed from the face frame forwards
    offset: np.ndarray | None = None  # the box centre less the landmarks' centre, fixed at the face frame


class AVSyncTracker:
    """Per clip: fed every context frame in time order (with the grid slot it belongs to), and told the face box
    of each slot's face frame, it measures the mouth on each frame once and scores each face frame once the
    frames up to `av_sync_span_s`/2 after it have passed (or the clip has ended)."""

    def __init__(
        self,
        cfg: FilterConfig,
        audio: np.ndarray,
        audio_start_s: float,
        landmarks68: Callable,
        fps: float,
        shot_of: Callable[[float], int] | None = None,
    ):
        self.cfg = cfg
        self.audio_start_s = audio_start_s
        self.landmarks68 = landmarks68  # (grey or RGB image, box) -> (68, 2) array
        self.fps = fps or 25.0
        self.loud = highpass(band_loudness(audio, self.fps), round(HIGHPASS_S * self.fps) | 1, 3)
        self.shot_of = shot_of or (lambda t: 0)
        self.half = cfg.av_sync_span_s / 2
        self.slots: dict[int, _Slot] = {}
        self.last_slot = -1
        self.series: list[tuple[float, float, int]] = []  # (time since the audio's start, opening, shot)
        self.open: list[_Open] = []

    def _measure(self, slot: _Slot, t: float, grey: np.ndarray) -> None:
        box = slot.box
        p = self.landmarks68(grey, tuple(int(round(v)) for v in box))
        centre = p.mean(0)
        if slot.offset is None:
            slot.offset = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) - centre
        cx, cy = centre + slot.offset
        hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        slot.box = (cx - hw, cy - hh, cx + hw, cy + hh)  # the next frame's box: the face as it moved
        self.series.append((t - self.audio_start_s, mouth_opening(p), self.shot_of(t)))

    def push(self, t: float, grey: np.ndarray, slot: int) -> list[tuple[object, dict]]:
        """Take one context frame; return the (item, measures) whose span has passed."""
        for k in [k for k, s in self.slots.items() if k < slot and s.box is None]:
            del self.slots[k]  # that grid frame has passed without a face: its frames give no mouth signal
        self.last_slot = slot
        if self.series and self.series[0][0] < t - self.audio_start_s - 3 * self.half - 2.0:
            keep = t - self.audio_start_s - 3 * self.half - 2.0  # older samples lie in no open window's span
            self.series = [x for x in self.series if x[0] >= keep]
        s = self.slots.setdefault(slot, _Slot())
        if s.box is not None:
            self._measure(s, t, grey)
        else:
            s.frames.append((t, grey))
        first = self.series[0][0] + self.audio_start_s if self.series else t
        ready = [o for o in self.open if t > max(o.centre + self.half, first + 2 * self.half) + 1e-6]
        self.open = [o for o in self.open if o not in ready]
        return [(o.item, self._score(o)) for o in ready]

    def start(self, item: object, centre: float, box) -> None:
        """Score the face at `box` in the frame at `centre` (its slot's context frames before it pushed already)."""
        s = self.slots.setdefault(self.last_slot, _Slot())
        before, s.frames = sorted(s.frames, key=lambda f: -f[0]), []
        s.box = tuple(float(v) for v in box)
        for t, grey in before:  # back in time from the face frame, following the face
            self._measure(s, t, grey)
        s.box, s.offset = tuple(float(v) for v in box), None  # forwards from the face frame again
        self.open.append(_Open(item, centre, self.shot_of(centre)))

    def finish(self) -> list[tuple[object, dict]]:
        """The items still open when the frames ran out (the clip's end)."""
        done, self.open = self.open, []
        self.slots.clear()
        return [(o.item, self._score(o)) for o in done]

    def _score(self, o: _Open) -> dict:
        series = sorted(x for x in self.series if x[2] == o.shot)
        if not series:
            return span_measures(np.zeros(0), np.zeros(0), self.loud, self.fps, self.cfg.av_sync_step_s, self.cfg)
        times = np.array([x[0] for x in series])
        openings = np.array([x[1] for x in series])
        c = o.centre - self.audio_start_s
        lo = min(max(c - self.half, times[0]), max(times[-1] - 2 * self.half, times[0]))  # the span, kept in the shot
        sel = (times >= lo - 1e-6) & (times <= lo + 2 * self.half + 1e-6)
        return span_measures(times[sel], openings[sel], self.loud, self.fps, self.cfg.av_sync_step_s, self.cfg)
