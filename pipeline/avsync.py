"""Active speaker / AV sync: is the face we kept the one that speaks, and is its sound in time with it?

A SyncNet-style offset search without SyncNet's weights. The mouth is read on every grey context frame (the
decoder sends them for the whole clip): as a small grey patch of the mouth ("pixels", the default) or as the 20
lip points of dlib's 68 landmarks less their centre, over the eye distance ("lips"). The sound is the level of
the audio in 4 bands (AUDIO_BANDS, 100-4000 Hz) at the video's frame rate: opening the mouth, spreading or
rounding the lips move the bands differently, so several bands follow the mouth better than one loudness. Audio
offsets of up to `av_sync_max_lag_s` either way are searched (±15 frames at 25 fps). One window (1 s) is too
little evidence for that, so each window is judged on the span of `av_sync_span_s` (6 s) around it, within its
shot. On that span the mouth is reduced to its first principal components (5 for pixels, 6 for lips), and at
each offset their first canonical correlation with the band levels is the offset's score (as in Slaney and
Covell's FaceSync), with both sides' correlation matrices shrunk towards the identity (RIDGE): a few seconds of
frames leave an unshrunk fit of several measures to several bands room to match noise at every offset.

- In sync: a clear peak at an offset near 0 (within `av_sync_tolerance_s`).
- Late or early audio: a clear peak at another offset (0.4 s late = +10 frames at 25 fps); beyond the search,
  no clear peak.
- Dubbed audio, a listener, a photo: no clear peak anywhere (a mouth that does not move scores 0).

`av_offset_s` is the best offset, `av_confidence` its score above the median score over all offsets, and
`av_sync` the best score within the tolerance above the median, or, when the best offset lies outside the
tolerance, the best score within it less that best score (<= 0). A window is flagged `av_unsynced` when `av_sync`
is under `min_av_sync` (so always when its best offset lies outside the tolerance); it is a flag, not a drop,
unless the config says so.

Both signals are high-passed (less their 0.3 s and 0.5 s moving averages): over several seconds head motion and
loudness drift would otherwise dominate. The mouth patch is placed from the window's face frame and follows a
template of the nose from frame to frame; the lips' face box starts at the detector's box and follows the
landmarks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import SAMPLE_RATE, FilterConfig

AUDIO_BANDS = (100, 500, 1000, 2000, 4000)  # Hz: the sound as its level in each of these bands (the voice's pitch
# and first formant, second formant, higher formants and fricatives): opening the mouth, spreading or rounding the lips
# move them differently, so several bands follow the mouth better than one loudness
RIDGE = 0.3  # the canonical correlations' shrinkage (of standardised measures' covariances towards the identity)
HIGHPASS_S = 0.3  # the mouth signal less its moving average over this: only changes at about the syllable rate count
SOUND_HIGHPASS_S = 0.5  # the band levels less their moving average over this (pauses are longer than the mouth's)
SMOOTH_S = 0.12  # the mouth signal is smoothed over this (landmark jitter is frame to frame)
MIN_SPAN_S = 2.0  # fewer seconds of mouth signal around a window: no score
COMPONENTS = 6  # principal components of the lip shapes ("lips") correlated with the band levels (on the real
# clips 2-5 let 76-82 % of dubbed windows be flagged, 6 and 8 93 %) ...
PATCH_COMPONENTS = 5  # ... of the mouth patches ("pixels"; on the real clips 3 and 4 flagged 19-28 % of in-sync
# windows, 5 flagged 6 %, 6 and 7 9-16 %)
NOSE_GRID = 20  # the nose template that follows the head between landmarks: this many pixels a side
PATCH = (16, 12)  # the mouth patch's size in pixels (width, height)
MOUTH_BOX = (2.0, 1.6)  # the mouth region's width and height in eye distances (the lips are ~0.9 wide) ...
MOUTH_BELOW_NOSE = 0.42  # ... centred this far below the base of the nose (the lips' centre on the real clips'
# frames: 0.36-0.50 eye distances, 10th-90th percentile, from dlib's 68 points)
MIN_PATCH_MOTION = 0.03  # pixels: RMS of the high-passed mouth patches (in their std) under this: a still mouth
# (in-sync real windows: 0.07 and more)
SPANS_KEPT = 16  # spans' measures kept for the windows that share them (a shot's first and last few windows)
NOSE_SIZE = 0.8  # the nose template's side in eye distances (from under the eye line to under the nose)


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


def mouth_patch(grey: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The grey mouth region `box` (mouth_box) of a frame, PATCH pixels (each the mean of 2x2 samples of the
    frame, the nearest pixel each), less its mean, over its std: (PATCH[0] * PATCH[1],) float32. A region outside
    the frame is cut at its edge."""
    cx, cy, w, h = box
    pw, ph = PATCH
    # sums of the 2x2 samples (4x their mean: the normalisation below does not see the difference)
    patch = _sample(grey, cx, cy, 0.0, 2 * pw, 2 * ph, w / (2 * pw), h / (2 * ph)).reshape(ph, 2, pw, 2).sum((1, 3))
    patch = patch.ravel()
    patch -= patch.sum() / patch.size
    return patch / max(float(np.sqrt(patch @ patch / patch.size)), 4.0)  # its std (a dot: cheaper than .std())


def _sample(
    grey: np.ndarray,
    cx: float,
    cy: float,
    step: float,
    nx: int,
    ny: int,
    sx: float = 0.0,
    sy: float = 0.0,
    dtype=np.float32,
) -> np.ndarray:
    """ny x nx pixels of `grey` (nearest) on a grid of spacing `step` (or `sx` across, `sy` down) centred on
    (cx, cy), as `dtype` (cut at the frame's edges)."""
    xs = np.rint(cx + _centred(nx) * (sx or step)).astype(np.intp)
    ys = np.rint(cy + _centred(ny) * (sy or step)).astype(np.intp)
    if xs[0] < 0 or xs[-1] >= grey.shape[1]:  # the grid is in order: its ends tell whether it leaves the frame
        np.clip(xs, 0, grey.shape[1] - 1, out=xs)
    if ys[0] < 0 or ys[-1] >= grey.shape[0]:
        np.clip(ys, 0, grey.shape[0] - 1, out=ys)
    return grey[ys[:, None], xs].astype(dtype)


@functools.cache
def _centred(n: int) -> np.ndarray:
    """n grid positions centred on 0, one apart (a frame's mouth is read with the same few grids)."""
    return np.arange(n) - (n - 1) / 2


def face_frame(landmarks5) -> tuple[np.ndarray, np.ndarray, float]:
    """(eyes' midpoint, the face's down direction (unit, across the eye line), eye distance) from dlib's 5 points
    (two corners of each eye, then the base of the nose)."""
    p = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    e1, e2 = p[0:2].mean(0), p[2:4].mean(0)
    iod = max(float(np.linalg.norm(e2 - e1)), 1.0)
    u = (e2 - e1) / iod
    down = np.array([-u[1], u[0]])
    return (e1 + e2) / 2, (down if down[1] >= 0 else -down), iod


def mouth_box(landmarks5) -> tuple[float, float, float, float]:
    """The mouth region the patches are cut from, from dlib's 5 points: centred MOUTH_BELOW_NOSE eye distances
    below the base of the nose, MOUTH_BOX eye distances wide and high (x centre, y centre, width, height), so it
    holds the lips, the teeth and the chin's top, wide open or shut."""
    _, down, iod = face_frame(landmarks5)
    cx, cy = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)[4] + MOUTH_BELOW_NOSE * iod * down
    return float(cx), float(cy), MOUTH_BOX[0] * iod, MOUTH_BOX[1] * iod


def nose_template(grey: np.ndarray, landmarks5) -> tuple[np.ndarray, np.ndarray, float]:
    """(template, centre, step): the grey nose region (rigid: it does not move with speech), NOSE_GRID pixels a
    side over NOSE_SIZE eye distances, centred between the eyes' midpoint and the base of the nose, less its mean."""
    mid, _, iod = face_frame(landmarks5)
    centre = (mid + np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)[4]) / 2
    step = NOSE_SIZE * iod / NOSE_GRID
    t = _sample(grey, centre[0], centre[1], step, NOSE_GRID, NOSE_GRID)
    return t - t.mean(), centre, step


def follow_nose(grey: np.ndarray, template: np.ndarray, centre: np.ndarray, step: float, reach: int = 3) -> np.ndarray:
    """Where the nose `template` (nose_template) lies in this frame, near `centre`: the shift of least squared
    difference within `reach` grid steps either way, refined to a fraction of a step by a parabola."""
    n, m = template.shape[0], 2 * reach + 1
    area = _sample(grey, centre[0], centre[1], step, n + 2 * reach, n + 2 * reach, dtype=np.float64)
    # each of the m x m shifted n x n windows as a row: sum((w - mean(w) - t)^2) expands into row sums, sums of
    # squares and products with t, a few matrix-vector products (numpy's per-call cost dominates at this size)
    rows = np.lib.stride_tricks.as_strided(area, (m, m, n, n), area.strides * 2, writeable=False).reshape(m * m, -1)
    t = np.asarray(template, dtype=np.float64).ravel()
    total = rows.sum(1)
    ssd = np.einsum("ij,ij->i", rows, rows) - total * (total - 2 * t.sum()) / (n * n) - 2 * (rows @ t) + t @ t
    ssd = ssd.reshape(m, m)
    if ssd[reach, reach] <= ssd.min() * (1 + 1e-6) + 1e-6:
        return centre  # no better place (a flat nose region matches anywhere): the head held still
    iy, ix = divmod(int(np.argmin(ssd)), m)
    s = ssd.tolist()  # a few Python floats: cheaper to refine than numpy scalars
    dy = iy - reach + (_vertex(s[iy - 1][ix], s[iy][ix], s[iy + 1][ix]) if 0 < iy < m - 1 else 0.0)
    dx = ix - reach + (_vertex(s[iy][ix - 1], s[iy][ix], s[iy][ix + 1]) if 0 < ix < m - 1 else 0.0)
    return centre + np.array([dx, dy]) * step


def _vertex(a: float, b: float, c: float) -> float:
    """Where the parabola through (-1, a), (0, b), (1, c) has its lowest point (0 when it has none)."""
    den = a - 2 * b + c
    return 0.5 * (a - c) / den if den > 0 else 0.0


def band_levels(audio: np.ndarray, fps: float, n: int | None = None, edges=AUDIO_BANDS) -> np.ndarray:
    """The energy in dB of `audio` (int16, 16 kHz) in each band between consecutive `edges` (Hz), over one frame's
    duration centred on (j + 0.5) / fps, for j < n (all frames of the audio when n is None): the sound of video
    frame j, (n, len(edges) - 1)."""
    L = max(16, int(round(SAMPLE_RATE / fps)))
    if n is None:
        n = int(len(audio) / SAMPLE_RATE * fps)
    centres = np.round((np.arange(n) + 0.5) / fps * SAMPLE_RATE).astype(np.int64)
    x = np.zeros(len(audio) + 2 * L, np.float32)
    x[L : L + len(audio)] = audio
    idx = centres[:, None] + L - L // 2 + np.arange(L)[None, :]
    frames = x[np.clip(idx, 0, len(x) - 1)] * np.hanning(L).astype(np.float32)
    freqs = np.fft.rfftfreq(L, 1 / SAMPLE_RATE)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    bands = [spec[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:], strict=False)]
    return 10 * np.log10(np.stack(bands, 1) / L + 1.0)


def _moving_mean(x: np.ndarray, w: int) -> np.ndarray:
    """The moving average of x over w samples along its first axis (edges held)."""
    pad = np.pad(x, [(w // 2, w - 1 - w // 2)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    c = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(pad, axis=0)])
    return (c[w:] - c[:-w]) / w


def highpass(x: np.ndarray, w: int, smooth: int = 1) -> np.ndarray:
    """x smoothed over `smooth` samples, less its moving average over `w` samples (edges held), along its first
    axis (each column of a 2-D x on its own)."""
    x = np.asarray(x, dtype=np.float64)
    if smooth > 1:
        x = _moving_mean(x, smooth)
    return x - _moving_mean(x, max(1, w))


def canonical_correlations(X: np.ndarray, Y: np.ndarray, ridge: float = RIDGE, weights=None) -> np.ndarray:
    """The first canonical correlation of the columns of X (n, p) with those of each Y (m, n, q) of a stack (or
    one Y (n, q): one value), over the rows `weights` (m, n) of 0 or 1 keep (all by default). Both sides are
    standardised and their correlation matrices shrunk by `ridge` towards the identity: a few seconds of frames
    leave an unshrunk fit of several mouth measures to several bands room to match noise."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    one = Y.ndim == 2
    Y = Y[None] if one else Y
    w = np.ones(Y.shape[:2]) if weights is None else np.asarray(weights, np.float64)
    n = np.maximum(w.sum(1), 1.0)[:, None, None]
    mx = (w @ X)[:, None, :] / n  # (m, 1, p): each offset's means over the rows it keeps
    my = np.einsum("mn,mnq->mq", w, Y)[:, None, :] / n
    cxx = np.einsum("mn,np,nr->mpr", w, X, X) / n - np.swapaxes(mx, 1, 2) @ mx
    cyy = np.einsum("mn,mnq,mnr->mqr", w, Y, Y) / n - np.swapaxes(my, 1, 2) @ my
    cxy = np.einsum("mn,np,mnq->mpq", w, X, Y) / n - np.swapaxes(mx, 1, 2) @ my
    dx = np.sqrt(np.maximum(np.diagonal(cxx, axis1=1, axis2=2), 0.0))
    dy = np.sqrt(np.maximum(np.diagonal(cyy, axis1=1, axis2=2), 0.0))
    dx, dy = np.where(dx > 0, dx, np.inf), np.where(dy > 0, dy, np.inf)  # a constant measure correlates with nothing
    rxx = cxx / (dx[:, :, None] * dx[:, None, :])
    ryy = cyy / (dy[:, :, None] * dy[:, None, :])
    rxy = cxy / (dx[:, :, None] * dy[:, None, :])
    wx = np.linalg.inv(np.linalg.cholesky(rxx + ridge * np.eye(X.shape[1])))
    wy = np.linalg.inv(np.linalg.cholesky(ryy + ridge * np.eye(Y.shape[2])))
    r = np.linalg.svd(wx @ rxy @ np.swapaxes(wy, 1, 2), compute_uv=False)[:, 0]
    return r[0] if one else r


def offset_profile(
    mouth: np.ndarray, frames: np.ndarray, sound: np.ndarray, max_offset: int, ridge: float = RIDGE
) -> np.ndarray:
    """For k = -max_offset..max_offset (k > 0: the sound comes k frames after the picture): the first canonical
    correlation of `sound[frames + k]` (one column or several: band levels) with `mouth` (one row per sample,
    taken at video frame numbers `frames`; one column or several). Samples whose shifted frame lies outside
    `sound` are left out of that offset's score (too few left: 0)."""
    X = np.asarray(mouth, dtype=np.float64).reshape(len(frames), -1)
    S = np.asarray(sound, dtype=np.float64).reshape(len(sound), -1)
    ks = np.arange(-max_offset, max_offset + 1)
    j = frames[None, :] + ks[:, None]
    inside = (j >= 0) & (j < len(S))
    out = canonical_correlations(X, S[np.clip(j, 0, len(S) - 1)], ridge, inside)
    return np.where(inside.sum(1) > X.shape[1] + S.shape[1] + 2, out, 0.0)


# a fixed start for the principal components' subspace iteration, so that a span always gets the same scores
_START = np.random.default_rng(0).standard_normal((4096, 16))


def principal_components(X: np.ndarray, k: int, iterations: int = 4) -> np.ndarray:
    """The scores of the rows of X (n, d) on (close to) their first k principal components, by subspace iteration
    from a fixed start (a randomised SVD, Halko et al. 2011): `iterations` products with X and X' instead of an
    eigendecomposition of a 150 x 150 Gram matrix, ~1.5 ms a span. The offset search only needs the subspace."""
    X = X - X.mean(0)
    q = np.linalg.qr(X @ _START[: X.shape[1], : min(k + 6, X.shape[1], X.shape[0])])[0]
    for _ in range(iterations):
        q = np.linalg.qr(X @ (X.T @ q))[0]  # orthonormal again after each product
    u, sv, _ = np.linalg.svd(q.T @ X, full_matrices=False)
    return (q @ u[:, :k]) * sv[:k]


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
    times: np.ndarray, mouth: np.ndarray, sound: np.ndarray, fps: float, cfg: FilterConfig, openings=None
) -> dict:
    """The AV-sync measures of one span: the mouth at `times` (seconds since the audio's start, in time order; one
    row of measures each: the lip shape or the mouth patch's pixels) against `sound` (band_levels of the audio at
    `fps`, high-passed). `mouth_motion` is the std of the inner-lip `openings` when given (under
    `min_mouth_motion`: a still mouth), else the RMS of the high-passed measures (under MIN_PATCH_MOTION); a still
    mouth scores 0 and is flagged."""
    out: dict = {"av_sync": None, "av_offset_s": None, "av_confidence": None, "mouth_motion": None,
                 "av_unsynced": False}  # fmt: skip
    if len(times) < 2 or times[-1] - times[0] < MIN_SPAN_S:
        return out
    step = max(cfg.av_sync_step_s, 1 / fps)
    X = np.asarray(mouth, dtype=np.float64).reshape(len(times), -1).copy()
    # filter each run of evenly spaced samples on its own (a window without a face leaves a gap)
    breaks = np.flatnonzero(np.diff(times) > 2.5 * step) + 1
    w, sm = round(HIGHPASS_S / step) | 1, max(1, round(SMOOTH_S / step)) | 1
    for run in np.split(np.arange(len(times)), breaks):
        X[run] = highpass(X[run], w, sm)
    if openings is not None:
        motion, floor = float(np.std(openings)), cfg.min_mouth_motion
    else:
        motion, floor = float(np.sqrt(np.mean(X**2))), MIN_PATCH_MOTION
    out["mouth_motion"] = round(motion, 4)
    if motion < floor:
        return {**out, "av_sync": 0.0, "av_confidence": 0.0, "av_unsynced": True}
    k = COMPONENTS if openings is not None else PATCH_COMPONENTS
    if X.shape[1] > k:
        X = principal_components(X, k)
    frames = np.round(times * fps).astype(np.int64)  # a frame shown from t has its sound centred on t + 0.5/fps
    K = int(round(cfg.av_sync_max_lag_s * fps))
    return {**out, **decide(offset_profile(X, frames, sound, K), fps, cfg)}


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
    box: tuple[float, float, float, float]  # the detector's box on the face frame, then (lips) where it moved
    landmarks5: np.ndarray  # dlib's 5 points on the face frame
    offset: np.ndarray | None = None  # lips: the box centre less the 68 landmarks' centre, fixed at the face frame
    anchor: tuple | None = None  # from the first frame measured: the nose template, its grid step, the mouth box's
    # centre less the nose's, the mouth box's size, the nose's centre there
    nose: np.ndarray | None = None  # the nose's centre on the last frame measured


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
        fps: float,
        shot_of: Callable[[float], int] | None = None,
        landmarks68: Callable | None = None,
    ):
        self.cfg = cfg
        self.audio_start_s = audio_start_s
        self.landmarks68 = landmarks68  # (grey image, box) -> (68, 2) array: for av_sync_mouth "lips"
        self.fps = fps or 25.0
        self.sound = highpass(band_levels(audio, self.fps), round(SOUND_HIGHPASS_S * self.fps) | 1, 3)
        self.shot_of = shot_of or (lambda t: 0)
        self.half = cfg.av_sync_span_s / 2
        self.slots: dict[int, _Slot] = {}
        self.last_slot = -1
        self.tracks: list[tuple[float, float, float]] = []  # each mouth track's last face: centre x, y and width
        self.series: list[tuple[float, float, np.ndarray, int, int]] = []  # (time since the audio's start, inner-lip
        # opening (lips), lip shape or mouth patch, shot, track)
        self.open: list[_Open] = []
        self.spans: dict[tuple, dict] = {}  # the measures of the spans scored lately (windows may share one)

    def _measure(self, f: _Follow, t: float, grey: np.ndarray) -> None:
        """The mouth of face `f` on this frame. `lips`: dlib's 68 landmarks, the lip shape (and the inner-lip
        opening). `pixels`: the mouth patch; the face frame's 5 points place the mouth relative to the nose, whose
        template then follows the head from frame to frame (the nose does not move with speech)."""
        if self.cfg.av_sync_mouth == "lips":
            p = self._landmarks(f, grey)
            self.series.append((t - self.audio_start_s, mouth_opening(p), mouth_shape(p), self.shot_of(t), f.track))
            return
        if f.anchor is None:
            template, f.nose, step = nose_template(grey, f.landmarks5)
            cx, cy, w, h = mouth_box(f.landmarks5)
            f.anchor = (template, step, np.array([cx, cy]) - f.nose, (w, h), f.nose)
        else:
            f.nose = follow_nose(grey, f.anchor[0], f.nose, f.anchor[1])
        (cx, cy), (w, h) = f.nose + f.anchor[2], f.anchor[3]
        patch = mouth_patch(grey, (float(cx), float(cy), w, h))
        self.series.append((t - self.audio_start_s, np.nan, patch, self.shot_of(t), f.track))

    def _landmarks(self, f: _Follow, grey: np.ndarray) -> np.ndarray:
        """dlib's 68 landmarks of face `f` on this frame; its box follows them for the next frame."""
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
        return p

    def _track(self, landmarks5: np.ndarray, taken: list[int]) -> int:
        """The mouth track of a face: the track (not `taken` by another face of its frame) whose last face is
        nearest, within one face width (two eye distances), or a new one."""
        mid, _, iod = face_frame(landmarks5)
        x, y, w = float(mid[0]), float(mid[1]), 2 * iod
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

    def start(self, item: object, centre: float, face, *others) -> None:
        """Score the face `face` (its box and dlib's 5 points; and those of `others`) in the frame at `centre`
        (its slot's context frames before it pushed already, the face frame first of them)."""
        s = self.slots.setdefault(self.last_slot, _Slot())
        before, s.frames = sorted(s.frames, key=lambda f: -f[0]), []
        tracks = []
        for box, points in (face, *others):
            box, points = tuple(float(v) for v in box), np.asarray(points, dtype=np.float64).reshape(5, 2)
            f = _Follow(self._track(points, tracks), box, points)
            for t, grey in before:  # back in time from the face frame, following the face
                self._measure(f, t, grey)
            # forwards from the face frame again, from the nose placed on it
            nose = None if f.anchor is None else f.anchor[4]
            s.faces.append(_Follow(f.track, box, points, anchor=f.anchor, nose=nose))
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
            return span_measures(times, times, self.sound, self.fps, self.cfg)
        c = o.centre - self.audio_start_s
        lo = min(max(c - self.half, times[0]), max(times[-1] - 2 * self.half, times[0]))  # the span, kept in the shot
        sel = np.flatnonzero((times >= lo - 1e-6) & (times <= lo + 2 * self.half + 1e-6))
        # windows near a shot's ends share their span (kept inside the shot): score it once (the same samples:
        # those of this track and shot between the same first and last times)
        key = (o.shot, track, len(sel), float(times[sel[0]]), float(times[sel[-1]])) if len(sel) else None
        if key in self.spans:
            return dict(self.spans[key])
        mouth = np.array([series[i][2] for i in sel]).reshape(len(sel), -1)
        openings = np.array([series[i][1] for i in sel]) if self.cfg.av_sync_mouth == "lips" else None
        measures = span_measures(times[sel], mouth, self.sound, self.fps, self.cfg, openings)
        self.spans[key] = measures
        if len(self.spans) > SPANS_KEPT:
            del self.spans[next(iter(self.spans))]  # the oldest
        return dict(measures)
