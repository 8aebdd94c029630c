"""Shot cuts: where the picture changes at once (an edit, a cut to another camera or person).

ffmpeg's scene score (the mean absolute difference of consecutive frames, less the previous difference, 0..1) on
frames shrunk to 64x36, one decoder thread. Measured on real talking heads (../shared/data/realvids, 9 clips, no
cut): the highest score within a shot is 0.079; a cut between two talking heads framed alike (two men, same
size, same place) scores 0.50. The default threshold, 0.25, lies about 3x from either.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from .media import _PTS_RE, _TB_RE, MediaInfo, _tail
from .reasons import ClipError, Reason

CUT_SIZE = "64:36"  # frames are compared at this size: the score is about the whole picture, not its detail


def detect_cuts(path: Path, info: MediaInfo, start_s: float, duration_s: float | None, threshold: float) -> list[float]:
    """Times (s, on the file's timeline) of the first frame of each new shot in [start_s, start_s + duration_s)."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "info", "-threads", "1", "-copyts", "-start_at_zero"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    graph = f"[0:v:0]scale={CUT_SIZE}:flags=area,select='gt(scene,{threshold})',showinfo@cut,nullsink"
    cmd += ["-an", "-sn", "-i", str(path), "-filter_complex", graph, "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise ClipError(Reason.CORRUPT_MEDIA, f"cut detection: {_tail(r.stderr.decode(errors='replace'))}")
    time_base, cuts = 1.0, []
    for line in r.stderr.splitlines():
        if tb := _TB_RE.search(line):
            time_base = int(tb.group(2)) / int(tb.group(3))
        elif m := _PTS_RE.search(line):
            cuts.append(round(int(m.group(3)) * time_base, 6))  # -start_at_zero: pts 0 is the file's start
    return cuts


def windows_across_cuts(starts: list[int], window: int, cuts_s: list[float], sample_rate: int) -> set[int]:
    """Positions (in `starts`) of the windows [s, s + window) (samples) whose audio has a cut inside it."""
    cut_samples = np.asarray(cuts_s, dtype=np.float64) * sample_rate
    out = set()
    for i, s in enumerate(starts):
        if np.any((cut_samples > s) & (cut_samples < s + window)):
            out.add(i)
    return out


def shot_of(t: float, cuts_s: list[float]) -> int:
    """Index of the shot that time t (same timeline as the cuts) lies in: the number of cuts at or before it."""
    return int(np.searchsorted(np.asarray(cuts_s), t + 1e-6, side="right"))
