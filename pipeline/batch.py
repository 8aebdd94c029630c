"""Batches of clips: the unit of orchestration (one Prefect task a batch), as video2dataset and img2dataset hand a
worker a shard's worth of inputs. Each clip in a batch still goes through `clip.run_clip` and writes its own status
file, so resume, statuses and rate limits stay per clip; a batch only changes how work is handed out and how
progress is reported.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import interrupt
from .clip import BuildContext, record_crash, run_clip
from .config import SAMPLE_RATE
from .records import Clip, ClipStatus

BATCH_CLIPS = 200  # at most this many clips a batch
BATCH_SECONDS = 1800.0  # at most about this much source video a batch (seconds between start and end)
UNKNOWN_CLIP_S = 60.0  # what a clip without both times (a whole file) counts for


@dataclass
class BatchResult:
    """What a batch did, small enough to travel back from a Dask worker and to print as one progress line."""

    clips: int = 0
    statuses: Counter = field(default_factory=Counter)  # ok / rejected / failed
    records: list[ClipStatus] = field(default_factory=list)  # each finished clip's status (the build keeps them)
    reasons: Counter = field(default_factory=Counter)
    windows: int = 0  # samples written
    seconds: float = 0.0  # wall time of the batch
    crashes: list[tuple[str, str]] = field(default_factory=list)  # (clip id, traceback) of clips that hit a bug
    abandoned: int = 0  # clips given up or not started because the run is stopping (no status: redone next run)
    disk_full: str | None = None  # the one-line message when OUT's disk filled up (the run stops)

    def line(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common(3))
        s = self.statuses
        return (
            f"{self.clips} clips in {self.seconds:.1f}s: {s['ok']} ok ({self.windows} windows), {s['rejected']} "
            f"rejected, {s['failed']} failed{f' ({reasons})' if reasons else ''}"
        )


class BatchCrashed(Exception):
    """Raised by a batch task after all its clips are recorded, when some crashed on a bug: the task fails
    (visible in the UI) and the flow still gets the batch's result."""

    def __init__(self, result: BatchResult):
        super().__init__(f"{len(result.crashes)} clip(s) crashed: {', '.join(c for c, _ in result.crashes)}")
        self.result = result


def expected_seconds(clip: Clip) -> float:
    """The source video a clip covers, for sizing batches (a clip without both times counts UNKNOWN_CLIP_S)."""
    if clip.start is None or clip.end is None:
        return UNKNOWN_CLIP_S
    return (clip.end - clip.start) / SAMPLE_RATE


def batch_size(total: int, workers: int, max_clips: int = BATCH_CLIPS) -> int:
    """Clips a batch: at most `max_clips`, and few enough that every worker gets several batches (so a short
    run of slow real clips still spreads over all workers)."""
    return max(1, min(max_clips, math.ceil(total / (max(1, workers) * 4))))


def batches(clips: Iterable[Clip], max_clips: int, max_seconds: float = BATCH_SECONDS) -> Iterator[list[Clip]]:
    """Consecutive clips in batches of at most `max_clips` clips and about `max_seconds` of source video
    (a batch holds at least one clip)."""
    batch: list[Clip] = []
    seconds = 0.0
    for clip in clips:
        s = expected_seconds(clip)
        if batch and (len(batch) >= max_clips or seconds + s > max_seconds):
            yield batch
            batch, seconds = [], 0.0
        batch.append(clip)
        seconds += s
    if batch:
        yield batch


def run_batch(clips: list[Clip], ctx: BuildContext, download_gate: Callable[[], None] | None = None) -> BatchResult:
    """Run each clip of a batch through `run_clip`. A clip that crashes on a bug is recorded as failed /
    internal_error (with its traceback in the result) and the batch goes on; the caller decides how to fail. Once
    the run is stopping, the clip in hand is abandoned and the rest are not started (none gets a status)."""
    t0 = time.perf_counter()
    result = BatchResult()
    for clip in clips:
        if interrupt.stopping.is_set():  # Ctrl-C, SIGTERM or a full disk: no new clips
            result.abandoned += 1
            continue
        t = time.perf_counter()
        try:
            status = run_clip(clip, ctx, download_gate=download_gate if clip.youtube_id else None)
        except interrupt.Interrupted:  # abandoned at the stop: no status, the next run redoes it
            result.abandoned += 1
            continue
        except interrupt.DiskFull as err:  # the run stops; said once, in one line, by the flow
            interrupt.stopping.set()
            result.disk_full = str(err.strerror)
            result.abandoned += 1
            continue
        except Exception as exc:  # a bug in one clip: record it, go on with the batch
            result.crashes.append((clip.clip_id, "".join(traceback.format_exception(exc))))
            status = record_crash(clip, ctx, exc, time.perf_counter() - t)
        result.clips += 1
        result.records.append(status)
        result.statuses[status.status] += 1
        if status.reason:
            result.reasons[status.reason] += 1
        result.windows += status.windows_written
    result.seconds = time.perf_counter() - t0
    return result
