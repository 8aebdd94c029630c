"""AV-sync stage: does the kept face's mouth move with the speech? Each face hit is scored over the grey
context frames around its frame (pipeline/avsync.py), once they have all passed; a hit comes out with its
`av_*` measures, or rejected (av_unsynced) when `filters.reject_av_unsynced` is on."""

from __future__ import annotations

from ..avsync import AVSyncTracker
from ..config import FilterConfig
from ..faces import DlibModels
from ..media import DecodedFrame
from ..reasons import Reason
from ..records import ClipAudio, FaceHit, Verdict


class AVSyncStage:
    def __init__(self, filters: FilterConfig, audio: ClipAudio, file_start_s: float, models: DlibModels):
        self.filters = filters
        self.tracker = AVSyncTracker(filters, audio.original, file_start_s, models.landmarks68)

    @property
    def context(self) -> tuple[float, float]:
        """(span, step) of the context frames the decoder must send around each grid frame."""
        return self.filters.av_sync_span_s, self.filters.av_sync_step_s

    def push(self, frame: DecodedFrame) -> list[FaceHit | Verdict]:
        """A context frame, in time order; returns the hits whose span has ended, scored."""
        return self._scored(self.tracker.push(frame.time, frame.rgb))

    def start(self, hit: FaceHit) -> None:
        """Score this hit over the frames around it (its own frame has been pushed already)."""
        self.tracker.start(hit, hit.frame_time, hit.face.bbox)

    def finish(self) -> list[FaceHit | Verdict]:
        """The hits still open when the frames ran out."""
        return self._scored(self.tracker.finish())

    def _scored(self, ready) -> list[FaceHit | Verdict]:
        out: list[FaceHit | Verdict] = []
        for hit, score in ready:
            hit = hit.with_measures(**score)
            if score["av_unsynced"] and self.filters.reject_av_unsynced:
                out.append(Verdict.reject(hit.window, Reason.AV_UNSYNCED, hit))
            else:
                out.append(hit)
        return out
