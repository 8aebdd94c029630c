"""Shot-cuts stage (`filters.shot_cuts`): where the picture changes at once (pipeline/cuts.py). A window whose
audio straddles a cut is rejected (shot_cut); the faces stage searches the whole frame again after a cut."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SAMPLE_RATE, Config
from ..cuts import detect_cuts, shot_of, windows_across_cuts
from ..reasons import Reason
from ..records import ClipMedia, Verdict, Window, samples_to_seconds


@dataclass(frozen=True)
class ShotCuts:
    times: tuple[float, ...]  # seconds from the clip's start
    file_start_s: float  # where the clip starts on the file's timeline

    @classmethod
    def detect(cls, media: ClipMedia, cfg: Config) -> ShotCuts | None:
        """The clip's cuts, or None when the stage is off."""
        if not cfg.filters.shot_cuts:
            return None
        duration_s = samples_to_seconds(media.duration) if media.duration is not None else None
        found = detect_cuts(media.path, media.info, media.file_start_s, duration_s, cfg.filters.cut_threshold)
        return cls(tuple(t - media.file_start_s for t in found), media.file_start_s)

    def split(self, windows: list[Window]) -> tuple[list[Window], list[Verdict]]:
        """(windows within one shot, verdicts of those whose audio straddles a cut)."""
        if not self.times or not windows:
            return list(windows), []
        across = windows_across_cuts([w.start for w in windows], windows[0].length, list(self.times), SAMPLE_RATE)
        kept = [w for i, w in enumerate(windows) if i not in across]
        cut = [Verdict.reject(w, Reason.SHOT_CUT, detail="a shot cut inside the window") for i, w in enumerate(windows)
               if i in across]  # fmt: skip
        return kept, cut

    def shot(self, frame_time_s: float) -> int:
        """The shot a frame (its pts on the file's timeline) belongs to."""
        return shot_of(frame_time_s - self.file_start_s, list(self.times))
