"""Faces stage: for each grid frame, the speaker's face in it (dlib HOG + tracker, aligned RGB crop) and the
face filters (detector score, out of frame, pose, blur). Per clip, since the tracker follows the speaker."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np

from .. import quality
from ..config import FaceConfig, FilterConfig
from ..faces import DlibModels, SpeakerTracker
from ..media import DecodedFrame
from ..reasons import Reason
from ..records import Face, FaceHit, Verdict, Window
from .decode import FrameGrid


class FaceStage:
    """Call it with each grid frame in time order: it returns the window's FaceHit when the frame's face passes
    the filters, else None. `finish()` gives the verdicts of the windows no frame gave a good face to."""

    def __init__(
        self,
        faces: FaceConfig,
        filters: FilterConfig,
        windows: Iterable[Window],
        grid: FrameGrid,
        hint: tuple[float, float] | None = None,
        models: DlibModels | None = None,
        shot_of: Callable[[float], int] | None = None,
    ):
        self.filters = filters
        self.grid = grid
        self.tracker = SpeakerTracker(faces, hint, models)
        self.windows = {w.index: w for w in windows}
        self.seen: set[int] = set()  # windows a frame was looked at for
        self.done: set[int] = set()  # ... and that got a face passing the filters
        self.last: dict[int, Verdict] = {}  # the latest rejection of each window not done
        self.shot_of, self.shot = shot_of, 0  # with shot cuts: the shot of the last frame looked at

    @property
    def models(self) -> DlibModels:
        return self.tracker.models

    def cut(self) -> None:
        """A shot cut: the next frame is searched whole, not around the last face."""
        self.tracker.reset()

    def __call__(self, frame: DecodedFrame) -> FaceHit | None:
        k = self.grid.window_of(frame.index)
        window = self.windows.get(k) if k is not None else None
        several = self.grid.first_span_s is not None  # several frames a window: the first good face is taken
        if window is None or k in self.done or (k in self.seen and not several):
            return None
        self.seen.add(k)
        if self.shot_of is not None and (shot := self.shot_of(frame.time)) != self.shot:
            self.shot = shot
            self.cut()  # a new shot: search the whole frame again
        found = self.tracker(frame.rgb)
        others = [h for f in self.tracker.others if (h := self.measured(FaceHit(window, frame.time, f), frame.rgb))]
        if not isinstance(found, Face):
            self.last[k] = Verdict.reject(window, Reason(found))
            return None
        hit = self.check(FaceHit(window, frame.time, found, dict(window.measures)), frame.rgb)
        if hit is not None and others:  # several faces, no hint: the AV-sync stage chooses among them
            hit = replace(hit, candidates=tuple(others))
        return hit

    def measured(self, hit: FaceHit, rgb: np.ndarray) -> FaceHit | None:
        """A candidate face with the face filters' measures, or None when it fails them."""
        hit = replace(hit, measures=dict(hit.window.measures))
        m = quality.face_measures(hit.face, (rgb.shape[1], rgb.shape[0]))
        hit = hit.with_measures(**m)
        return None if quality.face_reason(hit.face.det_score, m, self.filters) else hit

    def check(self, hit: FaceHit, rgb: np.ndarray) -> FaceHit | None:
        """The hit with the face filters' measures, or None (the window's rejection kept for `finish`)."""
        m = quality.face_measures(hit.face, (rgb.shape[1], rgb.shape[0]))
        hit = hit.with_measures(**m)
        k = hit.window.index
        if reason := quality.face_reason(hit.face.det_score, m, self.filters):
            self.last[k] = Verdict.reject(hit.window, reason, hit)
            return None
        self.done.add(k)
        self.last.pop(k, None)
        return hit

    def finish(self) -> list[Verdict]:
        """Rejections of the windows that got no good face: the latest reason seen, or frame_missing (the video
        ended before the window's frame)."""
        out = [self.last[k] for k in sorted(self.seen - self.done)]
        missing = "no frame at the window's time"
        return out + [
            Verdict.reject(w, Reason.FRAME_MISSING, detail=missing)
            for k, w in sorted(self.windows.items())
            if k not in self.seen
        ]
