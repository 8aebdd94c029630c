"""CPU cost of each pipeline stage on a generated 240 s, 854x480, 25 fps talking head (`make bench`).

What is measured: CPU seconds (user + sys) of this process *and* of the child processes it waited for
(ffprobe, ffmpeg), from getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN) deltas around each stage.
The process is pinned to one core first (children and threads inherit it), so the figures read as
"on one core"; wall time is recorded in the JSON only. The realtime factor is the video's duration
divided by a stage's CPU seconds, and per-window ms divides by the number of 1 s windows cut.

Stages, each timed on its own, in pipeline order:
  probe            ffprobe of the file
  audio decode     decode_audio: the whole file to 16 kHz mono int16
  speech windows   speech_windows: webrtcvad over every window
  frame decode     decode_frames_on_grid: the frame at each window centre, every frame consumed and
                   dropped as run_clip does (the face stage gets its frames from a second, untimed decode)
  faces            SpeakerTracker with embeddings off (HOG detection, 5-point landmarks, aligned crop)
                   on the frames of the speech windows, held in memory
  embeddings       the extra cost of embeddings on: 150 px chips + dlib's ResNet weights run in torch, in
                   batches, for each face found above; and, for comparison, dlib's own C++ ResNet
  samples          JPEG encode + sample assembly (the extras stage) and the clip tar write
Then end to end: pipeline.clip.run_clip on a Clip pointing at the file, once with embeddings on and once
off, each into its own fresh BuildContext out dir under out/bench/ (deleted first: nothing cached).

The dlib models and the torch embedder are loaded, and the lazily imported modules (webrtcvad, webdataset)
imported, before any timing, so neither model loading nor imports are counted. The torch embedder runs on one
thread (FaceConfig.torch_threads), like each worker of a build.
Figures are printed as a table and written to out/bench/bench_pipeline.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.clip import BuildContext, run_clip
from pipeline.config import SAMPLE_RATE, Config, FaceConfig, FilterConfig
from pipeline.demo.synth import Placement, astronaut, speech_wav, talking_head
from pipeline.faces import DlibModels, SpeakerTracker, embed_faces
from pipeline.media import DecodedFrame, MediaInfo, decode_audio, decode_frames_on_grid, probe
from pipeline.records import Clip, ClipAudio, ClipMedia, Face, FaceHit, SpeakerChoice, Window
from pipeline.sources import Source
from pipeline.speech import speech_windows
from pipeline.stages.extras import SampleMaker
from pipeline.tars import write_samples

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"
VIDEO = OUT / "talking-head-240s-480p.mp4"
RESULTS = OUT / "bench_pipeline.json"

SECONDS = 240
SIZE = (854, 480)
FPS = 25
FACE_PX = 150
# the face starts at x=180 and drifts right at 2 px/s: x=660 after 240 s, still wholly in the 854 px frame
START_X, START_Y, VX = 180.0, 240.0, 2.0

COMPARISON = "  for comparison: "  # rows that are not pipeline stages (left out of the sum)
TARGET_EMB_ON = 12.0  # x realtime, end to end, embeddings on
TARGET_EMB_OFF = 30.0  # x realtime, end to end, embeddings off
WAV2PIX_REFERENCE = (
    "Wav2Pix preprocessing method: about 13x here "
    "(decode every frame into Python, Haar at 1 fps, PNG writes; no alignment, no embeddings)"
)


# -- media -------------------------------------------------------------------------------------------
def ensure_video(path: Path = VIDEO) -> Path:
    """The benchmark video, generated once (and again whenever it is missing)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating {path.relative_to(ROOT)} ({SECONDS} s, {SIZE[0]}x{SIZE[1]}, {FPS} fps)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = speech_wav(Path(tmp) / "speech.wav")  # looped by talking_head to the video's length
        partial = path.with_name(path.name + ".partial.mp4")
        placement = Placement(astronaut(), FACE_PX, START_X, START_Y, vx=VX)
        talking_head(partial, [placement], SECONDS, wav, size=SIZE, fps=FPS)
        partial.replace(path)
    return path


# -- measuring ---------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + sys seconds of this process and of its waited-for children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Stage:
    name: str
    cpu_s: float = 0.0
    wall_s: float = 0.0


@contextmanager
def measure(name: str) -> Iterator[Stage]:
    """Time the block: CPU (self + children) and wall seconds."""
    st = Stage(name)
    c0, w0 = cpu_seconds(), time.perf_counter()
    yield st
    st.cpu_s, st.wall_s = cpu_seconds() - c0, time.perf_counter() - w0


@dataclass
class Bench:
    video_s: float
    windows: int = 0  # windows cut, the per-window denominator
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Time the block as one row of the stage table."""
        with measure(name) as st:
            yield st
        self.stages.append(st)

    def realtime(self, cpu_s: float) -> float:
        return self.video_s / cpu_s if cpu_s > 0 else float("inf")

    def per_window_ms(self, cpu_s: float) -> float:
        return 1000 * cpu_s / max(self.windows, 1)

    def row(self, st: Stage) -> dict:
        return {
            "stage": st.name,
            "cpu_s": round(st.cpu_s, 3),
            "wall_s": round(st.wall_s, 3),
            "realtime_x": round(self.realtime(st.cpu_s), 1),
            "per_window_ms": round(self.per_window_ms(st.cpu_s), 2),
        }


def pin_to_one_core() -> str:
    """Run this process (and, by inheritance, its threads and ffmpeg children) on one core."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def warm_up() -> None:
    """Load what the pipeline loads lazily, so that no stage pays for it."""
    import webdataset  # noqa: F401  (imported by write_samples)
    import webrtcvad  # noqa: F401  (imported by speech.new_vad)

    DlibModels.get().landmarks68(np.zeros((8, 8, 3), np.uint8), (0, 0, 4, 4))  # loads the 68-point model
    # the torch embedder (model parse + first-call setup), as a long-running worker has it loaded
    chip = np.zeros((150, 150, 3), np.uint8)
    face = Face((0, 0, 1, 1), [], 0.0, np.zeros((1, 1, 3), np.uint8), chip, 1, SpeakerChoice.ONLY)
    embed_faces([face], FaceConfig())


# -- stages ------------------------------------------------------------------------------------------
def bench_stages(bench: Bench, video: Path, cfg: Config) -> dict:
    """Each stage on its own, feeding the next; returns counts for the report."""
    with bench.stage("probe"):
        info = probe(video)
    with bench.stage("audio decode"):
        audio = decode_audio(video, 0.0, None)
    with bench.stage("speech windows (VAD)"):
        windows, n_cut = speech_windows(audio, cfg.speech)
    bench.windows = n_cut
    by_index = {w.index: w for w in windows}
    period_s = cfg.speech.window_samples / SAMPLE_RATE

    with bench.stage("frame decode (window centres)"):
        for _ in decode_frames_on_grid(video, info, 0.0, period_s / 2, period_s, n_cut):
            pass  # consumed and dropped, as run_clip does (holding 240 frames would add page-fault time)
    frames = speech_frames(video, info, period_s, n_cut, by_index)  # decoded again, untimed, for the faces

    models = DlibModels.get()
    with bench.stage("faces: detect + align + crop"):
        tracker = SpeakerTracker(dataclasses.replace(cfg.faces, embeddings=False), None, models)
        faces = {k: face for k, f in frames.items() if isinstance(face := tracker(f.rgb), Face)}

    with bench.stage("embeddings (extra, ResNet in torch)"):
        embed_all(models, frames, faces, cfg.faces)
    dlib_faces = {k: dataclasses.replace(f, chip=None, embedding=None) for k, f in faces.items()}
    with bench.stage(f"{COMPARISON}dlib's own ResNet"):
        embed_all(models, frames, dlib_faces, dataclasses.replace(cfg.faces, embedder="dlib"))

    with tempfile.TemporaryDirectory() as tmp, bench.stage("JPEG encode + samples + tar"):
        samples = make_samples(video, cfg, by_index, audio, frames, faces)
        written = write_samples(Path(tmp) / "bench.tar", samples, cfg.shards.mtime)
    return {
        "windows_cut": n_cut,
        "speech_windows": len(windows),
        "frames": len(frames),
        "faces": len(faces),
        "samples": written,
    }


def speech_frames(video: Path, info: MediaInfo, period: float, n: int, speech: dict) -> dict:
    """The first frame of each speech window, by window index (run_clip skips the other windows too)."""
    frames: dict[int, DecodedFrame] = {}
    for f in decode_frames_on_grid(video, info, 0.0, period / 2, period, n):
        if f.index in speech and f.index not in frames:
            frames[f.index] = f
    return frames


def make_samples(video: Path, cfg: Config, windows: dict, audio: np.ndarray, frames: dict, faces: dict):
    """The samples (JPEG crop, WAV window, JSON) of the faces found, made as the extras stage makes them."""
    clip, info = bench_clip(video), probe(video)
    make = SampleMaker(ClipMedia(clip, Source(video, 0, "local"), info, 0, None), ClipAudio(audio, audio), "train", cfg)
    for k, face in faces.items():
        w = windows[k]
        window = Window(w.index, w.start, cfg.speech.window_samples, w.speech_ratio, w.rms_dbfs)
        yield make(FaceHit(window, frames[k].time, face)).encoded()


def embed_all(models: DlibModels, frames: dict, faces: dict, cfg: FaceConfig) -> None:
    """The embedder's 150 px chips (from each face's own 5 landmarks) and their embeddings, in batches."""
    dlib = models.dlib
    for k, face in faces.items():
        points = [dlib.point(x, y) for x, y in face.landmarks5]
        shape = dlib.full_object_detection(dlib.rectangle(*face.bbox), points)
        faces[k] = dataclasses.replace(
            face, chip=np.asarray(dlib.get_face_chip(frames[k].rgb, shape, size=150, padding=0.25))
        )
    keys = list(faces)
    for i in range(0, len(keys), cfg.embed_batch):
        batch = keys[i : i + cfg.embed_batch]
        for k, face in zip(batch, embed_faces([faces[k] for k in batch], cfg), strict=True):
            faces[k] = face


def bench_clip(video: Path) -> Clip:
    return Clip(clip_id="bench", source=str(video), identity="bench", line=1)


def bench_end_to_end(bench: Bench, video: Path, embeddings: bool, av_sync: bool = True) -> dict:
    """run_clip from scratch into a fresh out dir; returns the row plus the clip's status."""
    name = f"embeddings-{'on' if embeddings else 'off'}" + ("" if av_sync else "-av-sync-off")
    out = OUT / f"e2e-{name}"
    shutil.rmtree(out, ignore_errors=True)
    ctx = BuildContext(out, Config(faces=FaceConfig(embeddings=embeddings), filters=FilterConfig(av_sync=av_sync)))
    with measure(f"end to end, {name.replace('-', ' ')}") as st:
        status = run_clip(bench_clip(video), ctx)
    if status.status != "ok":
        raise SystemExit(f"end-to-end run failed: {status.status} {status.reason}: {status.detail}")
    return {**bench.row(st), "windows_written": status.windows_written, "windows_total": status.windows_total}


# -- report ------------------------------------------------------------------------------------------
def print_table(rows: list[dict], total: dict) -> None:
    print(f"\n{'stage':<34} {'CPU s':>8} {'x realtime':>11} {'ms/window':>10}")
    print("-" * 66)
    for r in [*rows, total]:
        if r is total:
            print("-" * 66)
        print(f"{r['stage']:<34} {r['cpu_s']:>8.2f} {r['realtime_x']:>10.1f}x {r['per_window_ms']:>10.2f}")


def print_end_to_end(on: dict, off: dict, no_sync: dict) -> None:
    print("\nend to end (run_clip, fresh out dir, nothing cached; the AV-sync score on unless said):")
    for r, target in ((on, TARGET_EMB_ON), (off, TARGET_EMB_OFF)):
        verdict = "meets" if r["realtime_x"] >= target else "MISSES"
        print(
            f"  {r['stage']:<26} {r['cpu_s']:>7.2f} CPU s  {r['realtime_x']:>6.1f}x realtime  "
            f"{r['per_window_ms']:>6.2f} ms/window  target >= {target:g}x: {verdict}"
        )
    r = no_sync
    print(f"  {r['stage']:<26} {r['cpu_s']:>7.2f} CPU s  {r['realtime_x']:>6.1f}x realtime  "
          f"{r['per_window_ms']:>6.2f} ms/window  (the AV-sync score's cost: the difference)")  # fmt: skip
    print(f"  reference: {WAV2PIX_REFERENCE}")


def results_json(
    info: MediaInfo, pinned: str, counts: dict, rows: list[dict], total: dict, on: dict, off: dict, no_sync: dict
) -> dict:
    video = {"path": str(VIDEO.relative_to(ROOT)), "seconds": info.duration, "width": info.width}
    video |= {"height": info.height, "fps": info.fps, "face_px": FACE_PX, "vx_px_per_s": VX}
    method = {"cpu": "getrusage SELF + CHILDREN, user + sys", "affinity": pinned}
    method["dlib_models_loaded_before_timing"] = True
    end_to_end = {}
    for key, r, target in (("embeddings_on", on, TARGET_EMB_ON), ("embeddings_off", off, TARGET_EMB_OFF)):
        end_to_end[key] = {**r, "target_realtime_x": target, "meets": r["realtime_x"] >= target}
    end_to_end["embeddings_on_av_sync_off"] = no_sync
    return {
        "video": video,
        "method": method,
        "counts": counts,
        "stages": rows,
        "sum_of_stages": total,
        "end_to_end": end_to_end,
        "reference": WAV2PIX_REFERENCE,
        "platform": {"python": platform.python_version(), "ffmpeg": ffmpeg_version()},
    }


def ffmpeg_version() -> str:
    r = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True)
    return r.stdout.split("\n", 1)[0]


def main() -> int:
    pinned = pin_to_one_core()
    video = ensure_video()
    warm_up()
    info = probe(video)
    bench = Bench(video_s=info.duration)
    print(f"video: {video.relative_to(ROOT)}, {info.duration:.1f} s, {info.width}x{info.height}@{info.fps:g}")
    print(f"CPU seconds = user + sys of this process and its ffmpeg children; {pinned}")
    print("dlib models and the torch embedder loaded before timing (model load not counted)")

    counts = bench_stages(bench, video, Config())
    rows = [bench.row(st) for st in bench.stages]
    pipeline_stages = [s for s in bench.stages if not s.name.startswith(COMPARISON)]
    cpu, wall = sum(s.cpu_s for s in pipeline_stages), sum(s.wall_s for s in pipeline_stages)
    total = bench.row(Stage("sum of stages (embeddings on)", cpu, wall))
    print(
        f"windows: {counts['windows_cut']} cut, {counts['speech_windows']} with speech, "
        f"{counts['faces']} faces, {counts['samples']} samples (ms/window divides by windows cut)"
    )
    print_table(rows, total)

    on = bench_end_to_end(bench, video, embeddings=True)
    off = bench_end_to_end(bench, video, embeddings=False)
    no_sync = bench_end_to_end(bench, video, embeddings=True, av_sync=False)
    print_end_to_end(on, off, no_sync)

    results = results_json(info, pinned, counts, rows, total, on, off, no_sync)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
