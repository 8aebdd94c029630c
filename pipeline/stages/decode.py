"""Decode stage: the clip's audio as 16 kHz mono int16, and its frames on a grid of times (one per window, or
several in each window's first span), with the context frames the AV-sync score reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..config import SAMPLE_RATE, Config
from ..features import tile_to
from ..media import DecodedFrame, decode_audio, decode_frames_on_grid
from ..reasons import ClipError, Reason
from ..records import ClipAudio, ClipMedia, samples_to_seconds


def decode_clip_audio(media: ClipMedia, cfg: Config) -> ClipAudio:
    """The clip's audio. Raises ClipError (corrupt_media) when much less than expected decodes.

    A clip shorter than one window is tiled to one when `extras.tile_short` (Speech2Face's reference does)."""
    duration_s = samples_to_seconds(media.duration) if media.duration is not None else None
    audio = decode_audio(media.path, media.file_start_s, duration_s)
    expected_s = min(duration_s or float("inf"), media.info.duration - media.file_start_s)
    got_s = len(audio) / SAMPLE_RATE
    if expected_s - got_s > max(0.5, 0.1 * expected_s):
        raise ClipError(Reason.CORRUPT_MEDIA, f"decoded {got_s:.2f}s of audio where {expected_s:.2f}s were expected")
    W = cfg.speech.window_samples
    if cfg.extras.tile_short and W // 16 <= len(audio) < W:
        return ClipAudio(tile_to(audio, W), audio, tiled_from=len(audio))
    return ClipAudio(audio, audio)


@dataclass(frozen=True)
class FrameGrid:
    """Which frames the face stage looks at: `count` grid times `first_s + k * step_s` on the clip's timeline."""

    first_s: float
    step_s: float
    count: int
    window_s: float  # one window's length in seconds
    first_span_s: float | None = None  # frames in each window's first span only (extras.first_good_face)

    @classmethod
    def for_clip(cls, cfg: Config, n_windows: int) -> FrameGrid:
        period = cfg.speech.window_samples / SAMPLE_RATE
        ex = cfg.extras
        if ex.first_good_face:  # frames every step over the window's first span; the first good face is used
            # a grid time just after 0 selects the window's first frame
            n = int(round(n_windows * period / ex.first_face_step_s))
            return cls(1e-3, ex.first_face_step_s, n, period, ex.first_face_span_s)
        return cls(period / 2, period, n_windows, period)  # the frame at each window's centre

    def window_of(self, slot: int) -> int | None:
        """The window a grid slot's frame stands for, or None when it lies past the window's first span."""
        if self.first_span_s is None:
            return slot
        t = slot * self.step_s
        k = int(round(t * SAMPLE_RATE)) // int(round(self.window_s * SAMPLE_RATE))
        return None if t - k * self.window_s > self.first_span_s + 1e-6 else k


def decode_frames(media: ClipMedia, grid: FrameGrid, context_s: float = 0.0, context_step_s: float = 0.0):
    """The grid frames in time order (RGB), with grey context frames around each when `context_s` > 0."""
    frames: Iterator[DecodedFrame] = decode_frames_on_grid(
        media.path, media.info, media.file_start_s, grid.first_s, grid.step_s, grid.count, context_s, context_step_s
    )
    return frames
