"""AV-sync stage: does the kept face's mouth move with the speech, in time? The mouth is measured on every grey
context frame (the decoder sends them over the whole clip) once its window's face box is known, and each face
hit is scored on the span of `av_sync_span_s` around it (pipeline/avsync.py) once its frames have passed; a hit
comes out with its `av_*` measures, or rejected (av_unsynced) when `filters.reject_av_unsynced` is on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..avsync import AVSyncTracker
from ..config import FilterConfig
from ..faces import DlibModels
from ..media import DecodedFrame
from ..reasons import Reason
from ..records import ClipAudio, FaceHit, Verdict


def choose(hit: FaceHit, scores: list[dict]) -> tuple[FaceHit, dict]:
    """The hit, or the candidate face whose mouth moves with the voice (the best av_sync; the hit's own face
    on a tie or when none could be scored), with its measures."""
    if not hit.candidates:
        return hit.with_measures(**scores[0]), scores[0]
    faces = [hit, *hit.candidates]
    best = max(range(len(faces)), key=lambda i: (scores[i]["av_sync"] is not None, scores[i]["av_sync"] or 0.0, -i))
    chosen = replace(faces[best], candidates=())
    return chosen.with_measures(**scores[best], faces_scored=len(faces)), scores[best]


class AVSyncStage:
    def __init__(
        self,
        filters: FilterConfig,
        audio: ClipAudio,
        file_start_s: float,
        models: DlibModels,
        fps: float = 25.0,
        period_s: float = 1.0,
        shot_of: Callable[[float], int] | None = None,
    ):
        self.filters = filters
        self.period_s = period_s
        self.tracker = AVSyncTracker(filters, audio.original, file_start_s, fps, shot_of, models.landmarks68)

    @property
    def context(self) -> tuple[float, float]:
        """(span, step) of the context frames the decoder must send around each grid frame: one grid period, so
        that they cover the whole clip."""
        return self.period_s, self.filters.av_sync_step_s

    def push(self, frame: DecodedFrame) -> list[FaceHit | Verdict]:
        """A context frame, in time order; returns the hits whose span has ended, scored."""
        return self._scored(self.tracker.push(frame.time, frame.rgb, frame.index))

    def start(self, hit: FaceHit) -> None:
        """Score this hit (and its candidate faces) over the frames around it (its own frame has been pushed)."""
        faces = [(h.face.bbox, h.face.landmarks5) for h in (hit, *hit.candidates)]
        self.tracker.start(hit, hit.frame_time, *faces)

    def finish(self) -> list[FaceHit | Verdict]:
        """The hits still open when the frames ran out."""
        return self._scored(self.tracker.finish())

    def _scored(self, ready) -> list[FaceHit | Verdict]:
        out: list[FaceHit | Verdict] = []
        for hit, scores in ready:
            hit, score = choose(hit, scores)
            if score["av_unsynced"] and self.filters.reject_av_unsynced:
                out.append(Verdict.reject(hit.window, Reason.AV_UNSYNCED, hit))
            else:
                out.append(hit)
        return out
