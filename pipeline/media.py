"""ffprobe/ffmpeg: probe a source, decode its audio to 16 kHz mono int16, and decode only the
frames at given times, in one ffmpeg process per clip (no per-window processes, no frames on disk).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import SAMPLE_RATE
from .reasons import ClipError, InputError, Reason


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # seconds, of the file
    width: int
    height: int
    fps: float
    has_audio: bool
    has_video: bool
    audio_rate: int | None = None
    audio_channels: int | None = None


def require_ffmpeg() -> None:
    missing = [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]
    if missing:
        raise InputError(
            f"{' and '.join(missing)} not found on PATH. Install it: `sudo apt-get install -y ffmpeg` "
            "(or run `make shards`, which does it for you)."
        )


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.strip().split())
    return text[-n:]


def probe(path: Path) -> MediaInfo:
    """Streams and duration of a media file; ClipError corrupt_media / no_video if unusable."""
    cmd = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClipError(Reason.CORRUPT_MEDIA, f"ffprobe: {_tail(r.stderr) or 'failed'}")
    info = json.loads(r.stdout or "{}")
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    duration = float(info.get("format", {}).get("duration") or (video or audio or {}).get("duration") or 0)
    if video is None:
        return MediaInfo(duration, 0, 0, 0.0, audio is not None, False)
    w, h = int(video.get("width") or 0), int(video.get("height") or 0)
    if _rotation(video) in (90, 270):
        w, h = h, w  # ffmpeg autorotates on decode
    return MediaInfo(
        duration=duration,
        width=w,
        height=h,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) or 25.0,
        has_audio=audio is not None,
        has_video=w > 0 and h > 0,
        audio_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        audio_channels=int(audio["channels"]) if audio and audio.get("channels") else None,
    )


def _is_cover(stream: dict) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _rate(text: str | None) -> float:
    if not text or text in ("0/0", "0"):
        return 0.0
    num, _, den = text.partition("/")
    return float(num) / float(den or 1) if float(den or 1) else 0.0


def _rotation(stream: dict) -> int:
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            return int(abs(float(sd["rotation"]))) % 360
    return int(abs(float(stream.get("tags", {}).get("rotate", 0)))) % 360


def decode_audio(path: Path, start_s: float, duration_s: float | None) -> np.ndarray:
    """Audio of [start_s, start_s + duration_s) of the file as 16 kHz mono int16, any input layout."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start_s:.6f}", "-i", str(path)]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    # first_pts=0 pads with silence if the audio stream starts after the seek point, so sample 0
    # of the result is exactly start_s on the file's timeline
    cmd += ["-map", "0:a:0", "-vn", "-af", f"aresample={SAMPLE_RATE}:async=1:first_pts=0"]
    cmd += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True)
    err = r.stderr.decode(errors="replace")
    if r.returncode != 0:
        raise ClipError(Reason.CORRUPT_MEDIA, f"audio decode: {_tail(err)}")
    if "partial file" in err:  # ffmpeg exits 0 on a truncated mp4 and decodes what is there
        raise ClipError(Reason.CORRUPT_MEDIA, f"truncated file: {_tail(err, 200)}")
    return np.frombuffer(r.stdout, dtype="<i2").copy()


_PTS_RE = re.compile(rb"\[showinfo@(\w+) @[^]]*\].*?\bn:\s*(\d+)\s+pts:\s*-?\d+\s+pts_time:(-?[0-9.e+-]+)")


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # grid slot (window index); for a context frame, the nearest slot
    time: float  # the frame's own time, seconds on the file's timeline
    rgb: np.ndarray  # (H, W, 3) uint8 RGB; a context frame is grey: (H, W) uint8 luma
    on_grid: bool = True  # the frame shown at the slot's grid time (False: a context frame near it)


def decode_frames_on_grid(
    path: Path,
    info: MediaInfo,
    start_s: float,
    first_s: float,
    period_s: float,
    count: int,
    context_s: float = 0.0,
    context_step_s: float = 0.0,
) -> Iterator[DecodedFrame]:
    """The frames shown at times start_s + first_s + k*period_s, k < count, from one ffmpeg process.

    ffmpeg's select filter keeps the frame whose display interval [t, t + 1/fps) holds a grid time,
    and showinfo reports its exact pts, so nothing drifts and only the selected frames reach Python.

    With `context_s` > 0, the frames within context_s/2 of each grid time come too (one every `context_step_s`
    at most, counted from the grid time; 0: every frame), in time order, marked on_grid=False and grey (luma
    only, a third of the bytes; the grid frame itself is among them): the AV-sync score reads the mouth on
    them. They leave ffmpeg by a second pipe.
    """
    if count <= 0:
        return
    d = 1.0 / (info.fps or 25.0)
    c0, p, h = first_s, period_s, context_s / 2
    on_grid_end = c0 + (count - 0.5) * p
    grid = f"gt(floor((t+{d:.9f}-{c0:.9f})/{p:.9f}),floor((t-{c0:.9f})/{p:.9f}))*lt(t,{on_grid_end:.9f})"
    end = c0 + count * p + d
    if h > 0:
        end = max(end, c0 + (count - 1) * p + h + d)
    # one decoder thread: clips run in parallel already, and frame threading costs CPU time for nothing;
    # -t, -an and -sn before -i: only that much of the video is read
    head = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "info", "-threads", "1", "-ss", f"{start_s:.6f}"]
    head += ["-t", f"{end:.6f}", "-an", "-sn", "-i", str(path)]
    raw = ["-fps_mode", "passthrough", "-f", "rawvideo"]
    grid_output = ["-map", "[grid]", *raw, "-pix_fmt", "rgb24", "pipe:1"]
    if h <= 0:
        graph = f"[0:v:0]select='{grid}',showinfo@grid=checksum=0[grid]"
        yield from _decode([*head, "-filter_complex", graph, *grid_output], None, info, start_s, c0, p, d)
        return
    m = f"(t+{d / 2:.9f}-{c0:.9f})"  # the frame's middle, from the first grid time
    near = f"lt(abs({m}-{p:.9f}*round({m}/{p:.9f})),{h:.9f})*gte({m},-{h:.9f})*lt({m},{(count - 1) * p + h:.9f})"
    if context_step_s > d:  # frames holding a point of the grid time's own sub-grid of step context_step_s
        u, q = f"(t-{c0:.9f}-{p:.9f}*round({m}/{p:.9f}))", f"{context_step_s:.9f}"
        near += f"*gt(floor(({u}+{d:.9f})/{q}),floor({u}/{q}))"
    graph = (
        f"[0:v:0]select='max({grid},{near})',split=2[a][b];"
        f"[a]select='{grid}',showinfo@grid=checksum=0[grid];"
        # the luma plane as it is (a swscale conversion to grey would cost ~0.5 ms a frame)
        f"[b]select='{near}',showinfo@ctx=checksum=0,format=pix_fmts=yuv420p|yuvj420p,extractplanes=y[ctx]"
    )
    ctx_output = ["-map", "[ctx]", *raw, "-pix_fmt", "gray"]  # _decode adds the pipe it goes to
    yield from _decode([*head, "-filter_complex", graph, *grid_output], ctx_output, info, start_s, c0, p, d)


QUEUED_FRAMES = 16  # decoded frames waiting for the consumer: holds ffmpeg back, so memory stays flat


def _decode(cmd, ctx_output, info, start_s, c0, p, d) -> Iterator[DecodedFrame]:
    """Run ffmpeg (`cmd` writes the grid frames to stdout; `ctx_output`, if any, the output options of the
    context frames); yield the grid frames (RGB) and the context frames (grey, from a second pipe) merged in
    time order. A reader thread per pipe feeds one bounded queue, so ffmpeg never waits
    on a pipe nobody reads, whatever order it writes its two outputs in; each pipe is in time order, so a frame
    is released once the other pipe has reached its time (or ended)."""
    import heapq
    import queue

    ctx_r = ctx_w = None
    if ctx_output is not None:
        ctx_r, ctx_w = os.pipe()
        # ffmpeg's "pipe:N" writes to its fd N; pass_fds keeps the number in the child
        cmd = [*cmd, *ctx_output, f"pipe:{ctx_w}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(ctx_w,))
        os.close(ctx_w)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    times: dict[bytes, list[float]] = {b"grid": [], b"ctx": []}
    stderr_lines: list[bytes] = []
    cond = threading.Condition()
    finished = [False]
    frames: queue.Queue = queue.Queue(maxsize=QUEUED_FRAMES)
    stop = threading.Event()

    def read_stderr():
        for line in proc.stderr:  # type: ignore[union-attr]
            m = _PTS_RE.search(line)
            with cond:
                if m:
                    times[m.group(1)].append(float(m.group(3)))
                else:
                    stderr_lines.append(line)
                cond.notify_all()
        with cond:
            finished[0] = True
            cond.notify_all()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_frames(f, stream: bytes, frame_bytes: int, shape: tuple):
        n = 0
        try:
            while not stop.is_set():
                buf = f.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                with cond:
                    cond.wait_for(lambda n=n: len(times[stream]) > n or finished[0])
                    t = times[stream][n] if len(times[stream]) > n else None
                if t is None:  # showinfo line missing: the frame cannot be placed
                    break
                n += 1
                if not put((stream, t, np.frombuffer(buf, dtype=np.uint8).reshape(shape))):
                    break
        finally:
            put((stream, None, None))

    w, h = info.width, info.height
    readers = {b"grid": threading.Thread(target=read_frames, args=(proc.stdout, b"grid", w * h * 3, (h, w, 3)))}
    ctx_file = None
    if ctx_r is not None:
        ctx_file = os.fdopen(ctx_r, "rb")  # buffered: read(n) returns n bytes unless the pipe ended  # type: ignore[arg-type]
        readers[b"ctx"] = threading.Thread(target=read_frames, args=(ctx_file, b"ctx", w * h, (h, w)))
    threads = [threading.Thread(target=read_stderr), *readers.values()]
    for th in threads:
        th.daemon = True
        th.start()
    n = 0
    last = {stream: -np.inf for stream in readers}  # the latest time each pipe has delivered (inf: ended)
    pending: list = []  # heap of (time, seq, stream, frame) waiting for the other pipe
    seq = 0
    try:
        while any(v != np.inf for v in last.values()):
            stream, t, frame = frames.get()
            if t is None:
                last[stream] = np.inf
            else:
                last[stream] = t
                heapq.heappush(pending, (t, seq, stream, frame))
                seq += 1
            while pending and pending[0][0] <= min(last.values()):
                t, _, stream, frame = heapq.heappop(pending)
                if stream == b"grid":
                    n += 1
                    yield DecodedFrame(int(np.floor((t + d - c0) / p)), start_s + t, frame, True)
                else:
                    yield DecodedFrame(int(np.round((t + d / 2 - c0) / p)), start_s + t, frame, False)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for th in threads:
            th.join(timeout=5)
        if ctx_file is not None:
            ctx_file.close()
    if proc.returncode not in (0, -9) and n == 0:
        err = b"".join(stderr_lines).decode(errors="replace")
        raise ClipError(Reason.CORRUPT_MEDIA, f"video decode: {_tail(err)}")
