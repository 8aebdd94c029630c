"""Source stage: a manifest row → its video file (mirror, local path or segment download), probed, and where
the clip lies on the file's own timeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import DownloadConfig
from ..media import probe
from ..reasons import ClipError, Reason
from ..records import Clip, ClipMedia, samples_to_seconds
from ..sources import resolve_source


@dataclass(frozen=True)
class SourceStage:
    cfg: DownloadConfig
    download_dir: Path
    mirror: Path | None = None
    base_dir: Path | None = None  # the manifest's directory, for relative paths

    def __call__(self, clip: Clip, gate: Callable[[], None] | None = None) -> ClipMedia:
        """Raises ClipError when the video cannot be had, lacks a stream, or does not reach the clip's start."""
        src = resolve_source(clip, self.cfg, self.download_dir, self.mirror, self.base_dir, gate=gate)
        info = probe(src.path)
        if not info.has_video:
            raise ClipError(Reason.NO_VIDEO, f"{src.path.name} has no video stream")
        if not info.has_audio:
            raise ClipError(Reason.NO_AUDIO, f"{src.path.name} has no audio stream")
        # a downloaded segment starts at the segment's start: the clip on the file's own timeline
        start = clip.start or 0
        file_start = start - src.offset if clip.start is not None else 0
        if file_start < 0 or samples_to_seconds(file_start) >= info.duration:
            detail = f"start {samples_to_seconds(start):.3f}s is past the video's end"
            raise ClipError(Reason.SEGMENT_OUT_OF_RANGE, detail)
        duration = clip.end - start if clip.end is not None else None
        return ClipMedia(clip, src, info, file_start, duration)
