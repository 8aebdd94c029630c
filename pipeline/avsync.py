"""Active speaker / AV sync: is the face we kept the one that speaks?

A cheap score in the spirit of SyncNet without its weights: the mouth opening, read from dlib's 68 landmarks
on the frames within `av_sync_span_s` of the face frame (one every `av_sync_step_s`: the decoder's grey
context frames), correlated with the audio's loudness envelope at the same instants (the best of a few small
lags, since the mouth leads the sound a little). A talking speaker scores high; a still photo, a listener or
dubbed footage scores near or below zero. The score goes into the sample json and a low one flags the window
`av_unsynced`; it is a flag, not a drop, unless the config says so (strict sync filtering keeps only a few
percent of in-the-wild video).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .config import SAMPLE_RATE, FilterConfig

ENVELOPE_HALF_S = 0.02  # loudness over ±20 ms around each frame: one video frame's worth of sound
LAG_STEP_S = 0.04  # audio lags tried, in steps of one 25 fps frame
MIN_FRAMES = 5  # fewer frames around the face frame (the clip's edge): no score


def mouth_opening(landmarks68: np.ndarray) -> float:
    """Inner-lip gap (mean of the three vertical pairs 61-67, 62-66, 63-65) over the distance between the eye
    centres, so the measure does not change with the face's size in the frame."""
    p = np.asarray(landmarks68, dtype=np.float64)
    gap = np.linalg.norm(p[[61, 62, 63]] - p[[67, 66, 65]], axis=1).mean()
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    return float(gap / max(iod, 1.0))


def loudness_db(audio: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """RMS level in dB of `audio` (int16 samples) over ±ENVELOPE_HALF_S around each centre (sample indices)."""
    half = int(ENVELOPE_HALF_S * SAMPLE_RATE)
    first = max(0, int(centres.min()) - half)  # only the stretch around the centres, not the whole clip
    x = audio[first : max(first, int(centres.max()) + half)].astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    lo = np.clip(centres - first - half, 0, len(x))
    hi = np.clip(centres - first + half, 0, len(x))
    energy = (csum[hi] - csum[lo]) / np.maximum(hi - lo, 1)
    return 10 * np.log10(energy + 1.0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def sync_score(
    times: np.ndarray, openings: np.ndarray, audio: np.ndarray, audio_start_s: float, cfg: FilterConfig
) -> dict:
    """The window's AV-sync measures from the mouth openings at `times` (file seconds) and the clip audio
    (starting at `audio_start_s` on the file's timeline): av_sync (best Pearson r over the lags), av_lag_s,
    mouth_motion (std of the opening) and av_unsynced (score under the threshold).

    A mouth that does not move while there is speech is not the speaker's: it scores 0."""
    out: dict = {"av_sync": None, "av_lag_s": None, "mouth_motion": None, "av_unsynced": False}
    if len(times) < MIN_FRAMES:
        return out
    motion = float(np.std(openings))
    out["mouth_motion"] = round(motion, 4)
    step = LAG_STEP_S
    n_lags = int(cfg.av_sync_max_lag_s / step + 1e-9)
    still = motion < cfg.min_mouth_motion
    best, best_lag = None, 0.0
    for lag in sorted(range(-n_lags, n_lags + 1), key=abs):  # ties go to the smallest lag
        centres = np.round((times + lag * step - audio_start_s) * SAMPLE_RATE).astype(np.int64)
        if centres.min() < 0 or centres.max() >= len(audio):
            continue
        r = 0.0 if still else _pearson(openings, loudness_db(audio, centres))
        if best is None or r > best:
            best, best_lag = r, lag * step
    if best is None:  # the frames lie outside the audio (a tiled short clip): no score
        out["mouth_motion"] = None
        return out
    out.update(av_sync=round(best, 3), av_lag_s=round(best_lag, 3), av_unsynced=bool(best < cfg.min_av_sync))
    return out


@dataclass(eq=False)  # compared by identity: the item may hold arrays
class _Open:
    item: object  # what the caller gets back with the score
    centre: float
    box: tuple[int, int, int, int]
    times: list[float] = field(default_factory=list)
    openings: list[float] = field(default_factory=list)


class AVSyncTracker:
    """Per clip: fed every decoded frame in time order, it scores each face frame it is told about once the
    frames up to span/2 after it have passed. Frames up to span/2 before it are kept in a short buffer."""

    def __init__(self, cfg: FilterConfig, audio: np.ndarray, audio_start_s: float, landmarks68):
        self.cfg = cfg
        self.audio = audio
        self.audio_start_s = audio_start_s
        self.landmarks68 = landmarks68  # (grey or RGB image, box) -> (68, 2) array
        self.half = cfg.av_sync_span_s / 2
        self.recent: deque[tuple[float, np.ndarray]] = deque()
        self.open: list[_Open] = []

    def _add(self, o: _Open, t: float, rgb: np.ndarray) -> None:
        o.times.append(t)
        o.openings.append(mouth_opening(self.landmarks68(rgb, o.box)))

    def push(self, t: float, rgb: np.ndarray) -> list[tuple[object, dict]]:
        """Take one frame; return the (item, measures) whose span has ended."""
        done = [o for o in self.open if t > o.centre + self.half + 1e-6]
        self.open = [o for o in self.open if t <= o.centre + self.half + 1e-6]
        for o in self.open:
            self._add(o, t, rgb)
        self.recent.append((t, rgb))
        while self.recent and self.recent[0][0] < t - 2 * self.half - 1e-6:
            self.recent.popleft()
        return [(o.item, self._score(o)) for o in done]

    def start(self, item: object, centre: float, box) -> None:
        """Score the face at `box` in the frame at `centre` (already pushed) over the frames around it."""
        o = _Open(item, centre, tuple(box))
        for t, rgb in self.recent:
            if abs(t - centre) <= self.half + 1e-6:
                self._add(o, t, rgb)
        self.open.append(o)

    def finish(self) -> list[tuple[object, dict]]:
        """The items still open when the frames ran out (the clip's end)."""
        done, self.open = self.open, []
        self.recent.clear()
        return [(o.item, self._score(o)) for o in done]

    def _score(self, o: _Open) -> dict:
        return sync_score(np.array(o.times), np.array(o.openings), self.audio, self.audio_start_s, self.cfg)
