"""The frame at each grid time, for any input: frame rates (24, 25, 29.97, 30, 50, 60, variable), codecs (H.264,
HEVC, VP9, AV1, MPEG-4), rotation metadata, a video that starts after the audio or a file whose timeline starts
late, any audio rate. Each fixture's frame n is a flat grey of luma 22 + 13*(n % 16), so the frame we get says
which frame it is; ffprobe gives the ground-truth pts of every frame."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import decode_audio, decode_frames_on_grid, probe

SIZE = (96, 64)


def encoder_exists(name: str) -> bool:
    r = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True)
    return f" {name} " in r.stdout


def make_video(path: Path, *, fps: str = "25", seconds: float = 4.2, codec: list[str] | None = None,
               setpts: str | None = None, video_delay: float = 0.0, ts_offset: float = 0.0, rotate: int = 0,
               audio_rate: int = 16000, extra: list[str] | None = None) -> Path:  # fmt: skip
    """A clip whose frame n is a flat grey of luma 22 + 13*(n % 16), with a 440 Hz tone at `audio_rate`."""
    vf = "geq=lum='22+13*mod(N,16)':cb=128:cr=128"
    if setpts:
        vf += f",setpts='{setpts}'"
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-y",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"color=c=black:s={SIZE[0]}x{SIZE[1]}:r={fps}",
    ]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={audio_rate}:duration={seconds + 1}"]
    if video_delay:
        cmd = cmd[:5] + ["-itsoffset", str(video_delay)] + cmd[5:]
    cmd += ["-vf", vf, "-t", str(seconds), "-map", "0:v", "-map", "1:a", "-shortest"]
    cmd += codec or ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "2"]
    cmd += ["-fps_mode", "passthrough"]  # the frames as made: no frame duplicated to fill a gap
    if ts_offset:
        cmd += ["-output_ts_offset", str(ts_offset)]
    cmd += [*(extra or []), str(path)]
    subprocess.run(cmd, check=True)
    if rotate:
        set_display_matrix(path, rotate)
    return path


def set_display_matrix(path: Path, degrees: int) -> None:
    """Write a rotation into the video track's tkhd matrix, as a phone does (this ffmpeg cannot set it)."""
    import struct

    data = bytearray(path.read_bytes())
    c, s_ = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    matrix = struct.pack(">9i", c << 16, s_ << 16, 0, -s_ << 16, c << 16, 0, 0, 0, 1 << 30)
    at = 0
    while (at := data.find(b"tkhd", at + 1)) > 0:
        box = at - 4
        off = box + (60 if data[at + 4] == 1 else 48)
        if struct.unpack(">I", data[off + 36 : off + 40])[0]:  # the track with a width: the video
            data[off : off + 36] = matrix
    path.write_bytes(bytes(data))


def frame_times(path: Path) -> np.ndarray:
    """Every frame's pts (s) on the file's timeline, which starts at the container's start time (ffprobe)."""
    entries = "format=start_time:frame=best_effort_timestamp_time"
    cmd = ["ffprobe", "-v", "error", "-show_entries", entries, "-select_streams", "v:0", "-of", "json", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    data = json.loads(r.stdout)
    start = float(data["format"].get("start_time") or 0)
    return np.array(sorted(float(f["best_effort_timestamp_time"]) for f in data["frames"])) - start


def level_index(rgb: np.ndarray) -> int:
    luma = float(np.median(rgb)) * 219 / 255 + 16  # full-range RGB back to the video's limited-range luma
    return int(round((luma - 22) / 13)) % 16


CASES = {
    "h264_30fps": dict(fps="30"),
    "h264_25fps": dict(fps="25"),
    "h264_29.97fps": dict(fps="30000/1001"),
    "h264_24fps": dict(fps="24"),
    "h264_50fps": dict(fps="50"),
    "h264_60fps": dict(fps="60"),
    # frame intervals 20, 50, 20, 50 ... ms: variable frame rate, grid times on frame boundaries too
    "h264_vfr": dict(fps="30", setpts="(floor(N/2)*0.07+mod(N,2)*0.02)/TB", extra=["-video_track_timescale", "1000"]),
    "h264_vfr_drops": dict(fps="30", setpts="(N+floor(N/4))/30/TB", extra=["-video_track_timescale", "30"]),
    "h264_rotated90": dict(fps="30", rotate=90),
    "h264_video_starts_late": dict(fps="30", video_delay=0.5),
    "h264_timeline_starts_at_10s": dict(fps="30", ts_offset=10.0, extra=["-f", "mpegts"]),
    "hevc_30fps": dict(fps="30", codec=["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error"]),
    "vp9_30fps": dict(fps="30", codec=["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"]),
    "av1_30fps": dict(fps="30", codec=["-c:v", "libsvtav1", "-preset", "12", "-c:a", "libopus"]),
    "mpeg4_25fps_audio8k": dict(fps="25", codec=["-c:v", "mpeg4", "-q:v", "3"], audio_rate=8000),
    "h264_30fps_audio48k": dict(fps="30", audio_rate=48000),
    "h264_30fps_audio22k": dict(fps="30", audio_rate=22050),
}
EXT = {"vp9_30fps": ".webm", "av1_30fps": ".mkv", "h264_timeline_starts_at_10s": ".ts"}
ENCODER = {"hevc_30fps": "libx265", "vp9_30fps": "libvpx-vp9", "av1_30fps": "libsvtav1"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    return d


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("grid", [(0.5, 1.0), (0.001, 0.2), (0.25, 0.5)], ids=["centres", "fine", "half"])
def test_the_frame_on_screen_at_every_grid_time(clips, name, grid):
    if name in ENCODER and not encoder_exists(ENCODER[name]):
        pytest.skip(f"this ffmpeg has no {ENCODER[name]} encoder")
    path = clips / f"{name}{EXT.get(name, '.mp4')}"
    if not path.exists():
        make_video(path, **CASES[name])
    info = probe(path)
    truth = frame_times(path)
    first, period = grid
    for start_s in (0.0, 1.3):
        count = int((info.duration - start_s - first) / period) + 1
        frames = list(decode_frames_on_grid(path, info, start_s, first, period, count))
        want = {}
        for k in range(count):
            g = start_s + first + k * period
            on = np.flatnonzero(truth <= g + 1e-4)
            if len(on) and g < truth[-1] + 1 / info.fps:
                want[k] = on[-1]
            elif g < truth[0] and truth[0] - g <= 1 / info.fps:
                want[k] = 0  # within one frame before the first: the first frame
        got = {f.index: f for f in frames}
        assert sorted(got) == sorted(want), (name, start_s, sorted(set(want) ^ set(got)))
        for k, f in got.items():
            assert f.time == pytest.approx(truth[want[k]], abs=1e-3), (name, k)
            assert level_index(f.rgb) == want[k] % 16, (name, k, f.time)
            assert f.rgb.shape == ((SIZE[0], SIZE[1], 3) if CASES[name].get("rotate") else (SIZE[1], SIZE[0], 3))


@pytest.mark.parametrize("name", ["h264_video_starts_late", "h264_timeline_starts_at_10s", "h264_30fps_audio22k",
                                  "mpeg4_25fps_audio8k"])  # fmt: skip
def test_audio_and_frames_share_the_file_timeline(clips, name):
    """The tone starts at the file's start: audio sample 0 is time 0 whatever the streams' own start times are."""
    path = clips / f"{name}{EXT.get(name, '.mp4')}"
    if not path.exists():
        make_video(path, **CASES[name])
    audio = decode_audio(path, 0.0, None)
    assert abs(len(audio) / 16000 - probe(path).duration) < 0.15
    # the tone from the start (AAC's priming samples aside): no shift of the audio against the file's start
    assert np.abs(audio[:1600]).max() > 3000


def test_ffmpeg_is_present():
    assert shutil.which("ffmpeg") and shutil.which("ffprobe")
