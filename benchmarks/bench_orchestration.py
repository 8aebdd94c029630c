"""Orchestration figures (`make bench`): peak RSS of a build of 500 tiny clips vs 50 (target ratio <= 1.2),
the speed-up of re-running a finished build (target >= 10x), and Dask (2-worker LocalCluster) vs thread wall time.

Each build is `voiceface build` in a fresh Python process that reports its own peak RSS (ru_maxrss of the flow
process; the temporary Prefect server and the Dask workers are other processes). A re-run with nothing to do
takes the command's fast path (no Prefect server, no repacking). The clips are copies of one generated
2 s talking head listed under different ids, so every clip does full media work.

`--scale-only` runs only the scale figures (fast-failing rows, real clips with 1 and 2 workers); `--real-only`
only the real clips: the build with 1 and 2 workers of each runner, then the same clips through `run_clip` with no
orchestration (1 thread, 2 threads, 2 processes), the ceiling any runner works under.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench" / "orchestration"
# `voiceface build` in a fresh process, as a user runs it; it reports its own peak RSS
RUNNER = """
import json, os, resource, sys, time
import flows.build
from flows.cli import main
clip_cpu = [None]
def cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
def timed(run_batches):
    def run(*args, **kwargs):
        c = cpu()
        try:
            return run_batches(*args, **kwargs)
        finally:
            clip_cpu[0] = cpu() - c
    return run
# the CPU time of this process and the programs it ran and waited for (ffmpeg) during the clip work: with the
# thread runner, all of the clip work's (Dask's worker processes are not counted)
flows.build.run_batches = timed(flows.build.run_batches)
if __name__ == "__main__":
    t = time.perf_counter()
    main(["build", sys.argv[1], "--out", sys.argv[2], "--workers", "2", "--runner", sys.argv[3]])
    s = json.load(open(sys.argv[2] + "/summary.json"))
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "samples": s["samples"],
          "new": s["clips_new"], "cached": s["clips_cached"], "clips_seconds": s.get("clips_seconds"),
          "clips_cpu_s": clip_cpu[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tiny_clip() -> Path:
    from pipeline.demo.synth import Placement, astronaut, speech_wav, talking_head

    path = OUT / "tiny.mp4"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        speech = speech_wav(OUT / "speech.wav")
        talking_head(path, [Placement(astronaut(), 100, 160, 120)], 2.0, speech, size=(320, 240))
    return path


def manifest(n: int, clip: Path) -> Path:
    path = OUT / f"tiny-{n}.csv"
    rows = [f"{clip},tiny{i:05d},person{i % 50}" for i in range(n)]
    path.write_text("source,id,identity\n" + "\n".join(rows) + "\n")
    return path


def build(manifest_path: Path, out: Path, runner: str = "thread") -> dict:
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, str(manifest_path), str(out), runner], capture_output=True, text=True, cwd=ROOT
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"build failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def failing_manifest(n: int) -> Path:
    """`n` rows whose source file does not exist: each fails at once (file_not_found), so only the build's own
    bookkeeping (planning, tasks, statuses, clips.jsonl, summary, report) is timed. Each row is a 3-10 s segment,
    as AVSpeech's are (so batches are sized as an AVSpeech build's: 200 clips)."""
    path = OUT / f"failing-segments-{n}.csv"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write("source,id,identity,start,end\n")
            for i in range(n):
                start, end = 30 + i % 600, 33 + i % 600 + i % 8
                f.write(f"/nonexistent/voiceface-bench/{i}.mp4,row{i:07d},person{i % 1000},{start},{end}\n")
    return path


def build_failing(n: int, workers: int = 2) -> dict:
    """A build of `n` fast-failing rows in a fresh process: wall seconds, ms a row, peak RSS, Prefect events
    the temporary server dropped (its "Subscription queue is full" warnings)."""
    out = fresh(OUT / f"failing-out-{n}")
    cmd = [sys.executable, "-c", RUNNER, str(failing_manifest(n)), str(out), "thread"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"build failed:\n{r.stderr[-3000:]}")
    res = json.loads(line[len("RESULT ") :])
    text = r.stdout + r.stderr
    res["dropped_event_warnings"] = text.count("queue is full")
    res["ms_per_row"] = res["seconds"] * 1000 / n
    rows = sum(1 for _ in open(out / "clips.jsonl"))
    if rows != n:
        raise RuntimeError(f"clips.jsonl has {rows} rows for {n}")
    shutil.rmtree(out, ignore_errors=True)
    return res


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


REALVIDS = ROOT.parent / "shared" / "data" / "realvids"  # real clips beside the checkout (never in it)
REAL_COPIES = 4
ROWS_1M = os.environ.get("BENCH_ROWS_1M") == "1"  # the 1M-row run takes long: only on request


def real_clips(workers: int, runner: str) -> dict | None:
    """Clips a second over the real talking-head videos (never copied into the repo), with `workers` workers of
    the `runner` (thread: one process; dask: single-threaded worker processes)."""
    vids = sorted(REALVIDS.glob("*.mp4")) if REALVIDS.is_dir() else []
    if not vids:
        return None
    m = OUT / "realvids.csv"
    # each video REAL_COPIES times under its own ids: nine clips of 5-18 s alone cannot be split evenly over two
    # workers, which would cap the speed-up below what the workers give
    rows = [f"{v},{v.stem.replace('.', '_')}_{k},{v.stem}\n" for k in range(REAL_COPIES) for v in vids]
    m.write_text("source,id,identity\n" + "".join(rows))
    out = fresh(OUT / f"realvids-{runner}-{workers}")
    cmd = [sys.executable, "-c", RUNNER.replace('"2"', f'"{workers}"'), str(m), str(out), runner]
    cpu0, wall0 = children_cpu_s(), time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    cpu, wall = children_cpu_s() - cpu0, time.perf_counter() - wall0
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"build failed:\n{r.stderr[-3000:]}")
    res = json.loads(line[len("RESULT ") :])
    res["clips"] = len(rows)
    res["clips_per_s"] = len(rows) / res["clips_seconds"]  # the clip work alone: start-up is not parallel work
    # the CPU time of the build and everything it ran (ffmpeg, Prefect's server, Dask's workers) over its wall
    # time: what one worker already keeps busy bounds what a second one can add
    res["cpu_s"], res["cores_busy"] = cpu, cpu / wall
    return res


# the same clips through `run_clip` with no orchestration at all: one thread, two threads and two (forked) processes
# taking clips from one queue; what the clip work itself allows on this machine, whatever runs it
CEILING = """
import json, queue, shutil, sys, threading, time, multiprocessing as mp
from pathlib import Path
from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config
from pipeline.faces import DlibModels
from pipeline.records import Clip
VIDS, OUT = [Path(p) for p in sys.argv[2:]], Path(sys.argv[1])
def work(q, out):
    DlibModels.get()
    while True:
        try:
            i = q.get(timeout=0.5)
        except queue.Empty:
            return
        v = VIDS[i]
        run_clip(Clip(f"{v.stem.replace('.', '_')}_{i}", str(v), v.stem, 1), BuildContext(out=out, cfg=Config()))
def run(kind, n):
    out = OUT / f"{kind}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    ctx = mp.get_context("fork")
    q = queue.Queue() if kind == "thread" else ctx.Queue()
    for i in range(len(VIDS)):
        q.put(i)
    time.sleep(0.2)  # a multiprocessing queue fills through a feeder thread
    make = threading.Thread if kind == "thread" else ctx.Process
    workers = [make(target=work, args=(q, out)) for _ in range(n)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t
if __name__ == "__main__":
    DlibModels.get()
    print("RESULT " + json.dumps({"1 thread": run("thread", 1), "2 threads": run("thread", 2),
                                  "2 processes": run("process", 2)}))
"""


def clip_work_ceiling() -> dict | None:
    """Seconds for the real clips through `run_clip` alone: 1 thread, 2 threads, 2 processes (no Prefect, no Dask)."""
    vids = sorted(REALVIDS.glob("*.mp4")) if REALVIDS.is_dir() else []
    if not vids:
        return None
    cmd = [sys.executable, "-c", CEILING, str(fresh(OUT / "ceiling")), *map(str, vids * REAL_COPIES)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"clip work failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def scale_figures() -> dict:
    """Fast-failing rows at 20k and 200k (and 1M with BENCH_ROWS_1M=1); real clips with 1 and 2 workers."""
    figures = {}
    sizes = [] if "--real-only" in sys.argv else [20_000, 200_000] + ([1_000_000] if ROWS_1M else [])
    for n in sizes:
        r = build_failing(n)
        figures[f"rows_{n}"] = {k: round(v, 3) for k, v in r.items() if isinstance(v, (int, float))}
        print(
            f"{n} fast-failing rows, 2 workers: {r['seconds']:.1f} s wall, {r['ms_per_row']:.2f} ms a row "
            f"(target <= 1.5), peak RSS {r['peak_rss_mb']:.0f} MB, dropped-event warnings {r['dropped_event_warnings']}"
        )
    if "rows_200000" in figures:
        ratio = figures["rows_200000"]["peak_rss_mb"] / figures["rows_20000"]["peak_rss_mb"]
        figures["rss_ratio_200k_vs_20k"] = round(ratio, 3)
        print(f"peak RSS 200k / 20k rows: {ratio:.3f} (target <= 1.2)")
    for runner in ("thread", "dask"):
        one, two = real_clips(1, runner), real_clips(2, runner)
        if one is None:
            print(f"real clips: {REALVIDS} is absent, skipped")
            break
        speedup = round(one["clips_seconds"] / two["clips_seconds"], 2)
        figures[f"real_clips_{runner}"] = {"1": one, "2": two, "speedup": speedup}
        print(
            f"real clips ({one['clips']}), {runner} runner: {one['clips_per_s']:.3f} clips/s with 1 worker, "
            f"{two['clips_per_s']:.3f} with 2 -> {speedup}x (target >= 1.8x on 2 cores); cores busy over the "
            f"whole build: {one['cores_busy']:.2f} with 1 worker, {two['cores_busy']:.2f} with 2; CPU s "
            f"{one['cpu_s']:.1f} and {two['cpu_s']:.1f}"
        )
        if runner == "thread" and one.get("clips_cpu_s"):
            # the clip work of one worker (its Python thread and its ffmpeg decoder beside it) already keeps this
            # many cores busy; two workers on 2 cores can at most share the 2 cores it would need
            busy = one["clips_cpu_s"] / one["clips_seconds"]
            figures[f"real_clips_{runner}"]["one_worker_cores_busy"] = round(busy, 3)
            print(
                f"  the clip work with 1 worker: {one['clips_cpu_s']:.1f} CPU s in {one['clips_seconds']:.1f} s, "
                f"{busy:.2f} cores busy (its ffmpeg beside it), so 2 cores allow at most {2 / busy:.2f}x; "
                f"with 2 workers {two['clips_cpu_s']:.1f} CPU s in {two['clips_seconds']:.1f} s "
                f"({two['clips_cpu_s'] / two['clips_seconds']:.2f} cores busy)"
            )
    ceiling = clip_work_ceiling()
    if ceiling is not None:
        one = ceiling["1 thread"]
        figures["real_clips_no_orchestration"] = {k: round(v, 2) for k, v in ceiling.items()}
        print(
            f"the same clips through run_clip alone (no Prefect, no Dask): 1 thread {one:.1f} s, 2 threads "
            f"{ceiling['2 threads']:.1f} s ({one / ceiling['2 threads']:.2f}x), 2 processes "
            f"{ceiling['2 processes']:.1f} s ({one / ceiling['2 processes']:.2f}x): what the clip work itself allows"
        )
    return figures


def main() -> int:
    if "--scale-only" not in sys.argv and "--real-only" not in sys.argv:
        small()
    figures = scale_figures()
    (OUT / "bench_scale.json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {(OUT / 'bench_scale.json').relative_to(ROOT)}")
    return 0


def small() -> int:
    clip = tiny_clip()
    m50, m500 = manifest(50, clip), manifest(500, clip)
    first = build(m50, fresh(OUT / "out-50"))
    rerun = build(m50, OUT / "out-50")
    big = build(m500, fresh(OUT / "out-500"))
    dask = build(m50, fresh(OUT / "out-50-dask"), runner="dask")
    figures = {
        "peak_rss_mb_50": round(first["peak_rss_mb"], 1),
        "peak_rss_mb_500": round(big["peak_rss_mb"], 1),
        "rss_ratio_500_vs_50": round(big["peak_rss_mb"] / first["peak_rss_mb"], 3),
        "first_build_s_50": round(first["seconds"], 2),
        "rerun_s_50": round(rerun["seconds"], 2),
        "rerun_speedup": round(first["seconds"] / rerun["seconds"], 1),
        "rerun_cached": rerun["cached"],
        "build_s_500": round(big["seconds"], 2),
        "dask_s_50": round(dask["seconds"], 2),
        "thread_s_50": round(first["seconds"], 2),
        "samples_50": first["samples"],
        "samples_500": big["samples"],
    }
    print(
        f"peak RSS of the flow process: {figures['peak_rss_mb_50']} MB for 50 clips, "
        f"{figures['peak_rss_mb_500']} MB for 500 -> ratio {figures['rss_ratio_500_vs_50']} (target <= 1.2)"
    )
    print(
        f"re-run of a finished 50-clip build: {figures['first_build_s_50']} s -> {figures['rerun_s_50']} s, "
        f"{figures['rerun_speedup']}x faster (target >= 10x), {figures['rerun_cached']} clips cached"
    )
    print(
        f"50 clips, 2 workers: threads {figures['thread_s_50']} s, Dask LocalCluster {figures['dask_s_50']} s "
        f"(wall, including Prefect's temporary server and the cluster's start)"
    )
    (OUT / "bench_orchestration.json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {(OUT / 'bench_orchestration.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
