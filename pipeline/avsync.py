"""Active speaker / AV sync: is the face we kept the one that speaks, and is its sound in time with it?

A SyncNet-style offset search without SyncNet's weights. The mouth's shape (the 20 lip points of dlib's 68
landmarks, less their centre, over the eye distance) is read on every grey context frame (the decoder sends them
for the whole clip) and compared with the audio's speech-band loudness at the video's frame rate, at audio offsets
of up to `av_sync_max_lag_s` either way (±15 frames at 25 fps). One window (1 s) is too little evidence for that,
so each window is judged on the span of `av_sync_span_s` (6 s) around it, within its shot. On that span the mouth
shapes are reduced to their first 3 principal components, and at each offset the loudness is regressed on them:
the multiple correlation R (a canonical correlation with one side 1-D, as in Slaney and Covell's FaceSync) is the
offset's score. Lip opening alone correlates weakly with loudness on real faces; opening, width and protrusion
together do much better, and 3 components leave little room for chance fits.

- In sync: a clear peak at an offset near 0 (within `av_sync_tolerance_s`).
- Late or early audio: a clear peak at another offset (0.4 s late = +10 frames at 25 fps); beyond the search,
  no clear peak.
- Dubbed audio, a listener, a photo: no clear peak anywhere (a mouth that does not move scores 0).

`av_offset_s` is the best offset, `av_confidence` its R above the median R over all offsets, and `av_sync` the
best R within the tolerance above the median R, or, when the best offset lies outside the tolerance, the best R
within it less that best R (<= 0). A window is flagged `av_unsynced` when `av_sync` is under `min_av_sync` (so
always when its best offset lies outside the tolerance); it is a flag, not a drop, unless the config says so.

Both signals are high-passed (less their 0.3 s and 0.5 s moving averages): over several seconds head motion and
loudness drift would otherwise dominate. The face box of each context frame starts at the detector's box in its window's
face frame and follows the landmarks from frame to frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import SAMPLE_RATE, FilterConfig

BAND_HZ = (300.0, 3000.0)  # speech band of the loudness: the voice's formants, not the room's hum or hiss
HIGHPASS_S = 0.3  # the mouth signal less its moving average over this: only changes at about the syllable rate count
LOUD_HIGHPASS_S = 0.5  # the loudness less its moving average over this (its pauses are longer than the mouth's)
SMOOTH_S = 0.12  # the mouth signal is smoothed over this (landmark jitter is frame to frame)
MIN_SPAN_S = 2.0  # fewer seconds of mouth signal around a window: no score
COMPONENTS = 3  # principal components of the mouth shape the loudness is regressed on


def mouth_opening(landmarks68: np.ndarray) -> float:
    """Inner-lip gap (mean of the three vertical pairs 61-67, 62-66, 63-65) over the distance between the eye
    centres, so the measure does not change with the face's size in the frame."""
    p = np.asarray(landmarks68, dtype=np.float64)
    gap = np.linalg.norm(p[[61, 62, 63]] - p[[67, 66, 65]], axis=1).mean()
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    return float(gap / max(iod, 1.0))


def mouth_shape(landmarks68: np.ndarray) -> np.ndarray:
    """The 20 lip points (48-67) less their centre, over the distance between the eye centres: (40,)."""
    p = np.asarray(landmarks68, dtype=np.float64)
    iod = max(float(np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))), 1.0)
    lips = p[48:68]
    return ((lips - lips.mean(0)) / iod).ravel()


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
    """For k = -max_offset..max_offset (k > 0: the sound comes k frames after the picture): the correlation of
    `loud[frames + k]` with `mouth` (one row per sample, taken at video frame numbers `frames`; one column or
    several), the multiple correlation R of a least-squares fit when there are several columns. Samples whose
    shifted frame lies outside `loud` are left out of that offset's R."""
    X = np.asarray(mouth, dtype=np.float64).reshape(len(frames), -1)
    out = np.zeros(2 * max_offset + 1)
    for i, k in enumerate(range(-max_offset, max_offset + 1)):
        j = frames + k
        ok = (j >= 0) & (j < len(loud))
        if ok.sum() <= X.shape[1] + 2:
            continue
        b = loud[j[ok]] - loud[j[ok]].mean()
        Xk = X[ok] - X[ok].mean(0)
        bb = float(b @ b)
        if bb <= 0 or not np.any(Xk):
            continue
        if X.shape[1] == 1:  # a signed Pearson r
            a = Xk[:, 0]
            out[i] = float(a @ b) / np.sqrt(float(a @ a) * bb)
        else:
            q, _ = np.linalg.qr(Xk)
            out[i] = np.sqrt(min(1.0, float(np.sum((q.T @ b) ** 2)) / bb))
    return out


def decide(profile: np.ndarray, fps: float, cfg: FilterConfig) -> dict:
    """The span's measures from its offset profile: av_offset_s (the best offset), av_confidence (its score above
    the median), av_sync (the best score within the tolerance above the median, or less the best score when the
    best offset lies outside the tolerance) and av_unsynced (av_sync under min_av_sync)."""
    K = (len(profile) - 1) // 2
    tol = int(round(cfg.av_sync_tolerance_s * fps))
    med = float(np.median(profile))
    best = int(np.argmax(profile))
    near = float(profile[max(0, K - tol) : K + tol + 1].max())
    offset = best - K
    sync = near - med if abs(offset) <= tol else near - float(profile[best])
    return {
        "av_sync": round(sync, 3),
        "av_offset_s": round(offset / fps, 3),
        "av_confidence": round(float(profile[best]) - med, 3),
        "av_unsynced": bool(sync < cfg.min_av_sync),
    }


def span_measures(
    times: np.ndarray, openings: np.ndarray, shapes: np.ndarray, loud: np.ndarray, fps: float, cfg: FilterConfig
) -> dict:
    """The AV-sync measures of one span: the mouth at `times` (seconds since the audio's start, in time order;
    its inner-lip opening and its shape, one row each) against `loud` (band_loudness of the audio at `fps`,
    high-passed). A still mouth scores 0 and is flagged."""
    out: dict = {"av_sync": None, "av_offset_s": None, "av_confidence": None, "mouth_motion": None,
                 "av_unsynced": False}  # fmt: skip
    if len(times) < 2 or times[-1] - times[0] < MIN_SPAN_S:
        return out
    motion = float(np.std(openings))
    out["mouth_motion"] = round(motion, 4)
    if motion < cfg.min_mouth_motion:
        return {**out, "av_sync": 0.0, "av_confidence": 0.0, "av_unsynced": True}
    step = max(cfg.av_sync_step_s, 1 / fps)
    X = np.asarray(shapes, dtype=np.float64).reshape(len(times), -1).copy()
    # filter each run of evenly spaced samples on its own (a window without a face leaves a gap)
    breaks = np.flatnonzero(np.diff(times) > 2.5 * step) + 1
    w, sm = round(HIGHPASS_S / step) | 1, max(1, round(SMOOTH_S / step)) | 1
    for run in np.split(np.arange(len(times)), breaks):
        for c in range(X.shape[1]):
            X[run, c] = highpass(X[run, c], w, sm)
    if X.shape[1] > COMPONENTS:
        u, sv, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
        X = u[:, :COMPONENTS] * sv[:COMPONENTS]
    frames = np.round(times * fps).astype(np.int64)  # a frame shown from t has its sound centred on t + 0.5/fps
    K = int(round(cfg.av_sync_max_lag_s * fps))
    return {**out, **decide(offset_profile(X, frames, loud, K), fps, cfg)}


@dataclass(eq=False)  # compared by identity: the item may hold arrays
class _Open:
    item: object  # what the caller gets back with the measures
    centre: float
    shot: int
    tracks: list[int]  # the mouth track of each of its faces


@dataclass
class _Follow:
    """One face followed over the context frames of a slot, from its face frame."""

    track: int
    box: tuple[float, float, float, float]
    offset: np.ndarray | None = None  # the box centre less the landmarks' centre, fixed at the face frame


@dataclass
class _Slot:
    """The context frames around one grid frame: buffered until its faces are known, then measured."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    faces: list[_Follow] = field(default_factory=list)


class AVSyncTracker:
    """Per clip: fed every context frame in time order (with the grid slot it belongs to), and told the face boxes
    of each slot's face frame, it measures each face's mouth on each frame once, and scores each face frame once
    the frames up to `av_sync_span_s`/2 after it have passed (or the clip has ended).

    A face frame may have several faces (the speaker is not known): each is followed on its own mouth track
    (faces of successive slots are linked by position), and each gets its measures."""

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
        self.loud = highpass(band_loudness(audio, self.fps), round(LOUD_HIGHPASS_S * self.fps) | 1, 3)
        self.shot_of = shot_of or (lambda t: 0)
        self.half = cfg.av_sync_span_s / 2
        self.slots: dict[int, _Slot] = {}
        self.last_slot = -1
        self.tracks: list[tuple[float, float, float]] = []  # each mouth track's last face: centre x, y and width
        self.series: list[tuple[float, float, np.ndarray, int, int]] = []  # (time since the audio's start, opening,
        # mouth shape, shot, track)
        self.open: list[_Open] = []

    def _measure(self, f: _Follow, t: float, grey: np.ndarray) -> None:
        box = f.box
        # the predictor reads pixels all over its image: on the face's neighbourhood only, they stay in the CPU's
        # cache (2.9 ms a frame on whole 854x480 frames that change, ~1 ms on the crop)
        m = 0.5 * (box[2] - box[0])
        x0, y0 = max(0, int(box[0] - m)), max(0, int(box[1] - m))
        x1, y1 = min(grey.shape[1], int(box[2] + m) + 1), min(grey.shape[0], int(box[3] + m) + 1)
        crop = np.ascontiguousarray(grey[y0:y1, x0:x1])
        rel = (int(round(box[0])) - x0, int(round(box[1])) - y0, int(round(box[2])) - x0, int(round(box[3])) - y0)
        p = self.landmarks68(crop, rel) + [x0, y0]
        centre = p.mean(0)
        if f.offset is None:
            f.offset = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) - centre
        cx, cy = centre + f.offset
        hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
        f.box = (cx - hw, cy - hh, cx + hw, cy + hh)  # the next frame's box: the face as it moved
        self.series.append((t - self.audio_start_s, mouth_opening(p), mouth_shape(p), self.shot_of(t), f.track))

    def _track(self, box, taken: list[int]) -> int:
        """The mouth track of a face: the track (not `taken` by another face of its frame) whose last face is
        nearest, within one face width, or a new one."""
        x, y, w = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], 1)
        dist = [(float(np.hypot(x - tx, y - ty)), i, tw) for i, (tx, ty, tw) in enumerate(self.tracks)]
        near = [(d, i) for d, i, tw in dist if d < max(w, tw) and i not in taken]
        i = min(near)[1] if near else len(self.tracks)
        if i == len(self.tracks):
            self.tracks.append((x, y, w))
        self.tracks[i] = (x, y, w)
        return i

    def push(self, t: float, grey: np.ndarray, slot: int) -> list[tuple[object, list[dict]]]:
        """Take one context frame; return the (item, measures of each of its faces) whose span has passed."""
        for k in [k for k, s in self.slots.items() if k < slot]:
            del self.slots[k]  # that grid frame has passed: with no face, its frames give no mouth signal
        self.last_slot = slot
        if self.series and self.series[0][0] < t - self.audio_start_s - 3 * self.half - 2.0:
            keep = t - self.audio_start_s - 3 * self.half - 2.0  # older samples lie in no open window's span
            self.series = [x for x in self.series if x[0] >= keep]
        s = self.slots.setdefault(slot, _Slot())
        if s.faces:
            for f in s.faces:
                self._measure(f, t, grey)
        else:
            s.frames.append((t, grey))
        first = self.series[0][0] + self.audio_start_s if self.series else t
        ready = [o for o in self.open if t > max(o.centre + self.half, first + 2 * self.half) + 1e-6]
        self.open = [o for o in self.open if o not in ready]
        return [(o.item, self._score(o)) for o in ready]

    def start(self, item: object, centre: float, box, *others) -> None:
        """Score the face at `box` (and those at `others`) in the frame at `centre` (its slot's context frames
        before it pushed already)."""
        s = self.slots.setdefault(self.last_slot, _Slot())
        before, s.frames = sorted(s.frames, key=lambda f: -f[0]), []
        tracks = []
        for b in (box, *others):
            b = tuple(float(v) for v in b)
            f = _Follow(self._track(b, tracks), b)
            for t, grey in before:  # back in time from the face frame, following the face
                self._measure(f, t, grey)
            s.faces.append(_Follow(f.track, b))  # forwards from the face frame again
            tracks.append(f.track)
        self.open.append(_Open(item, centre, self.shot_of(centre), tracks))

    def finish(self) -> list[tuple[object, list[dict]]]:
        """The items still open when the frames ran out (the clip's end)."""
        done, self.open = self.open, []
        self.slots.clear()
        return [(o.item, self._score(o)) for o in done]

    def _score(self, o: _Open) -> list[dict]:
        return [self._score_track(o, track) for track in o.tracks]

    def _score_track(self, o: _Open, track: int) -> dict:
        series = sorted((x for x in self.series if x[3] == o.shot and x[4] == track), key=lambda x: x[0])
        times = np.array([x[0] for x in series])
        if not series:
            return span_measures(times, times, times, self.loud, self.fps, self.cfg)
        c = o.centre - self.audio_start_s
        lo = min(max(c - self.half, times[0]), max(times[-1] - 2 * self.half, times[0]))  # the span, kept in the shot
        sel = np.flatnonzero((times >= lo - 1e-6) & (times <= lo + 2 * self.half + 1e-6))
        openings = np.array([series[i][1] for i in sel])
        shapes = np.array([series[i][2] for i in sel]).reshape(len(sel), -1)
        return span_measures(times[sel], openings, shapes, self.loud, self.fps, self.cfg)
