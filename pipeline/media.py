"""ffprobe/ffmpeg: probe a source, decode its audio to 16 kHz mono int16, and decode only the
frames at given times, in one ffmpeg process per clip (no per-window processes, no frames on disk).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
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
    vfr: bool = False  # variable frame rate: the mean rate (fps) is below the stream's base rate
    start: float = 0.0  # the container's start time (pts, s): time 0 of the file's timeline, for audio and video


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


def check_not_killed(tool: str, returncode: int | None) -> None:
    """A child ended by a signal (the OOM killer, a kill, Ctrl-C) says nothing about the media: what it wrote is
    cut short. That is a transient failure, redone on the next run, never a result."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        raise ClipError(Reason.DECODER_KILLED, f"{tool} was killed by {name}", status="failed")


def probe(path: Path) -> MediaInfo:
    """Streams and duration of a media file; ClipError corrupt_media / no_video if unusable."""
    cmd = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)  # see _decode
    check_not_killed("ffprobe", r.returncode)
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
        vfr=_is_vfr(video),
        start=float(info.get("format", {}).get("start_time") or 0.0),
    )


def _is_cover(stream: dict) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _is_vfr(video: dict) -> bool:
    """The mean frame rate differs from the base rate by more than 1 % (dropped or irregular frames)."""
    avg, base = _rate(video.get("avg_frame_rate")), _rate(video.get("r_frame_rate"))
    return bool(avg and base and abs(avg - base) > 0.01 * base)


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
    # no seek from the start: a seek goes to the video's first keyframe and skips the audio before it, which
    # loses audio where the video starts after it
    seek = ["-ss", f"{start_s:.6f}"] if start_s > 0 else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *seek, "-i", str(path)]
    if duration_s is not None:
        cmd += ["-t", f"{duration_s:.6f}"]
    # first_pts=0 pads with silence if the audio stream starts after the seek point, so sample 0
    # of the result is exactly start_s on the file's timeline
    cmd += ["-map", "0:a:0", "-vn", "-af", f"aresample={SAMPLE_RATE}:async=1:first_pts=0"]
    cmd += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True, start_new_session=True)  # see _decode
    err = r.stderr.decode(errors="replace")
    check_not_killed("the audio decoder (ffmpeg)", r.returncode)
    if r.returncode != 0:
        raise ClipError(Reason.CORRUPT_MEDIA, f"audio decode: {_tail(err)}")
    if "partial file" in err:  # ffmpeg exits 0 on a truncated mp4 and decodes what is there
        raise ClipError(Reason.CORRUPT_MEDIA, f"truncated file: {_tail(err, 200)}")
    return np.frombuffer(r.stdout, dtype="<i2").copy()


_PTS_RE = re.compile(rb"\[showinfo@(\w+) @[^]]*\].*?\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:")
# showinfo's pts_time has 6 significant digits (1 ms at 1000 s): times come from the integer pts and the time base
_TB_RE = re.compile(rb"\[showinfo@(\w+) @[^]]*\] config in time_base: (\d+)/(\d+)")


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
    context_scale: float = 1.0,
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
    got = 0
    for frame in _frames_on_grid(path, info, start_s, first_s, period_s, count, context_s, context_step_s,
                                 context_scale, seek=True):  # fmt: skip
        got += 1
        yield frame
    if got == 0:  # some demuxers (MPEG-TS) give no frame after a seek with -copyts: read from the start
        yield from _frames_on_grid(path, info, start_s, first_s, period_s, count, context_s, context_step_s,
                                   context_scale, seek=False)  # fmt: skip


def _frames_on_grid(path, info, start_s, first_s, period_s, count, context_s, context_step_s, context_scale, seek):
    d = 1.0 / (info.fps or 25.0)
    p, h = period_s, context_s / 2
    # a frame's time on screen: the mean frame duration; twice that in variable frame rate video, so that gaps
    # between frames up to twice the mean are covered by the frame before them (the later of two frames
    # claiming a grid time wins: exact)
    d_on = 2 * d if info.vfr else d
    # -copyts: the filters see each frame's own pts, so grid times are pts (the file's timeline + its start);
    # the seek starts a little early, so the frame on screen at the first grid time is not dropped by it
    seek = max(0.0, start_s + first_s - max(h, d_on) - 0.1) if seek else 0.0
    c0 = info.start + start_s + first_s
    grid = grid_select(d_on, c0, p, count)
    end = start_s + first_s - seek + count * p + d
    if h > 0:
        end = max(end, start_s + first_s - seek + (count - 1) * p + h + d)
    # one decoder thread: clips run in parallel already, and frame threading costs CPU time for nothing;
    # -t, -an and -sn before -i: only that much of the video is read
    head = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "info", "-threads", "1", "-copyts", "-ss", f"{seek:.6f}"]
    head += ["-t", f"{end:.6f}", "-an", "-sn", "-i", str(path)]
    raw = ["-fps_mode", "passthrough", "-f", "rawvideo"]
    grid_output = ["-map", "[grid]", *raw, "-pix_fmt", "rgb24", "pipe:1"]
    slot = _grid_slot(d_on, c0, p, count)
    if h <= 0:
        graph = f"[0:v:0]select='{grid}',showinfo@grid=checksum=0[grid]"
        yield from _decode([*head, "-filter_complex", graph, *grid_output], None, info, -info.start, slot, c0, p, d)
        return
    m = f"(t+{d / 2:.9f}-{c0:.9f})"  # the frame's middle, from the first grid time
    near = f"lt(abs({m}-{p:.9f}*round({m}/{p:.9f})),{h:.9f})*gte({m},-{h:.9f})*lt({m},{(count - 1) * p + h:.9f})"
    if context_step_s > d:  # frames holding a point of the grid time's own sub-grid of step context_step_s
        u, q = f"(t-{c0:.9f}-{p:.9f}*round({m}/{p:.9f}))", f"{context_step_s:.9f}"
        near += f"*gt(floor(({u}+{d:.9f})/{q}),floor({u}/{q}))"
    if context_scale < 1.0:  # a smaller luma plane: a third of the pixels to move and to read the mouth in
        shrink = f",scale=w=2*trunc(iw*{context_scale:.4f}/2):h=2*trunc(ih*{context_scale:.4f}/2):flags=area"
    else:
        shrink = ""
    graph = (
        f"[0:v:0]select='max({grid},{near})',split=2[a][b];"
        f"[a]select='{grid}',showinfo@grid=checksum=0[grid];"
        # the luma plane as it is (a swscale conversion to grey would cost ~0.5 ms a frame)
        f"[b]select='{near}',showinfo@ctx=checksum=0,format=pix_fmts=yuv420p|yuvj420p,extractplanes=y{shrink}[ctx]"
    )
    ctx_output = ["-map", "[ctx]", *raw, "-pix_fmt", "gray"]  # _decode adds the pipe it goes to
    ctx_wh = context_size(info, context_scale)
    cmd = [*head, "-filter_complex", graph, *grid_output]
    yield from _decode(cmd, ctx_output, info, -info.start, slot, c0, p, d, ctx_wh)


GRID_EPS_S = 1e-4  # grid times this close before a frame's pts count as on that frame (float and pts rounding)


def grid_select(d: float, c0: float, p: float, count: int) -> str:
    """ffmpeg select expression: the frame on screen at a grid time c0 + k*p, k < count.

    A frame is taken to be on screen from its pts t to t + d (d: the nominal frame duration); when the previous
    frame's interval ended before t (a gap in variable frame rate video) the frame also covers the gap, so no
    grid time falls between two frames; the first frame also covers the frame duration before it. Grid times
    on a frame's pts (30 fps and a 0.5 s grid) belong to that frame: the bounds carry GRID_EPS_S, never a float
    tie. A grid time is in [lo, hi) iff ceil((hi - c0)/p) > ceil((lo - c0)/p)."""
    e = GRID_EPS_S
    lo = f"(if(isnan(prev_t),t-{d:.9f},min(t,prev_t+{d:.9f}))-{e})"
    hi = f"(t+{d:.9f}-{e})"
    return f"gt(min({count},ceil(({hi}-{c0:.9f})/{p:.9f})),max(0,ceil(({lo}-{c0:.9f})/{p:.9f})))"


def _grid_slot(d: float, c0: float, p: float, count: int):
    """The grid index a selected frame at filter time t stands for: the last grid time before its interval's end."""

    def slot(t: float) -> int:
        return min(count, int(np.ceil((t + d - GRID_EPS_S - c0) / p))) - 1

    return slot


def context_size(info: MediaInfo, scale: float) -> tuple[int, int]:
    """(width, height) of the context frames' luma plane at `scale` (ffmpeg's even sizes)."""
    if scale >= 1.0:
        return info.width, info.height
    return 2 * int(info.width * round(scale, 4) / 2), 2 * int(info.height * round(scale, 4) / 2)


QUEUED_FRAMES = 16  # decoded frames waiting for the consumer: holds ffmpeg back, so memory stays flat


def _decode(cmd, ctx_output, info, shift_s, slot, c0, p, d, ctx_wh=None) -> Iterator[DecodedFrame]:
    """Run ffmpeg (`cmd` writes the grid frames to stdout; `ctx_output`, if any, the output options of the
    context frames); yield the grid frames (RGB) and the context frames (grey, from a second pipe) merged in
    time order. ffmpeg runs in a session of its own, so a Ctrl-C at the terminal reaches the build (which stops
    it here, or lets it finish) and not the decoder under a clip. A reader thread per pipe feeds one bounded queue,
    so ffmpeg never waits
    on a pipe nobody reads, whatever order it writes its two outputs in; each pipe is in time order, so a frame
    is released once the other pipe has reached its time (or ended). A grid frame is held until the next one:
    in variable frame rate video two frames can claim one grid time, and the later one is the frame shown."""
    import heapq
    import queue

    ctx_r = ctx_w = None
    if ctx_output is not None:
        ctx_r, ctx_w = os.pipe()
        # ffmpeg's "pipe:N" writes to its fd N; pass_fds keeps the number in the child
        cmd = [*cmd, *ctx_output, f"pipe:{ctx_w}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(ctx_w,), start_new_session=True
        )
        os.close(ctx_w)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    times: dict[bytes, list[float]] = {b"grid": [], b"ctx": []}
    time_base: dict[bytes, float] = {}
    stderr_lines: list[bytes] = []
    cond = threading.Condition()
    finished = [False]
    frames: queue.Queue = queue.Queue(maxsize=QUEUED_FRAMES)
    stop = threading.Event()

    def read_stderr():
        for line in proc.stderr:  # type: ignore[union-attr]
            m = _PTS_RE.search(line)
            tb = None if m else _TB_RE.search(line)
            with cond:
                if m:
                    times[m.group(1)].append(int(m.group(3)) * time_base[m.group(1)])
                elif tb:
                    time_base[tb.group(1)] = int(tb.group(2)) / int(tb.group(3))
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
        cw, ch = ctx_wh or (w, h)
        readers[b"ctx"] = threading.Thread(target=read_frames, args=(ctx_file, b"ctx", cw * ch, (ch, cw)))
    threads = [threading.Thread(target=read_stderr), *readers.values()]
    for th in threads:
        th.daemon = True
        th.start()
    n = 0
    last = {stream: -np.inf for stream in readers}  # the latest time each pipe has delivered (inf: ended)
    pending: list = []  # heap of (time, seq, stream, frame) waiting for the other pipe
    seq = 0
    held = None  # the latest grid frame: (slot, time, frame)
    try:
        while any(v != np.inf for v in last.values()):
            stream, t, frame = frames.get()
            if stream == b"grid":
                k = slot(t) if t is not None else None
                if held is not None and k == held[0]:
                    held = (k, t, frame)  # the same grid time: the later frame is the one on screen
                    continue
                if held is not None:
                    heapq.heappush(pending, (held[1], seq, stream, (held[0], held[2])))
                    seq += 1
                    last[stream] = held[1]
                held = (k, t, frame) if t is not None else None
                if t is None:
                    last[stream] = np.inf
            elif t is None:
                last[stream] = np.inf
            else:
                last[stream] = t
                heapq.heappush(pending, (t, seq, stream, frame))
                seq += 1
            while pending and pending[0][0] <= min(last.values()):
                t, _, stream, frame = heapq.heappop(pending)
                if stream == b"grid":
                    n += 1
                    yield DecodedFrame(frame[0], round(shift_s + t, 6), frame[1], True)
                else:
                    yield DecodedFrame(int(np.round((t + d / 2 - c0) / p)), round(shift_s + t, 6), frame, False)
    finally:
        stop.set()
        we_killed = proc.poll() is None  # the consumer stopped early: ffmpeg still running is ours to end
        if we_killed:
            proc.kill()
        proc.wait()
        for th in threads:
            th.join(timeout=5)
        if ctx_file is not None:
            ctx_file.close()
    if not we_killed:  # killed from outside after n frames: the rest of the clip is missing, not absent
        check_not_killed("the frame decoder (ffmpeg)", proc.returncode)
    if proc.returncode != 0 and not we_killed and n == 0:
        err = b"".join(stderr_lines).decode(errors="replace")
        raise ClipError(Reason.CORRUPT_MEDIA, f"video decode: {_tail(err)}")
