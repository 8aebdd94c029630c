"""The AV-sync score on real talking heads: each clip of ../shared/data/realvids as it is, dubbed with another
person's voice, and with its audio 0.2, 0.4 and 1.0 s late (versions made with ffmpeg into a temp dir), run
through the clip pipeline (`run_clip`, embeddings off). Prints, per version, the share of windows flagged
`av_unsynced` and each clip's median score, against the targets (<= 10 % of in-sync windows flagged, >= 90 % of
dubbed and >= 80 % of 0.4 s-late windows flagged; every in-sync clip above every dubbed or late clip), and the
score's cost. The mouth is measured as the argument says, "pixels" or "lips" (without one: the config's
default, `filters.av_sync_mouth`, pixels).

    .venv/bin/python benchmarks/bench_avsync_real.py            # the default: pixels
    .venv/bin/python benchmarks/bench_avsync_real.py lips
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.clip import BuildContext, run_clip  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.media import probe  # noqa: E402
from pipeline.records import Clip  # noqa: E402
from pipeline.tars import read_samples  # noqa: E402

REALVIDS = ROOT.parent / "shared" / "data" / "realvids"
LATE_S = (0.2, 0.4, 1.0)
DUB_FROM = 3  # clip i is dubbed with the voice of clip i + 3 (another person)


def ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *map(str, args)], check=True)


def versions(clips: list[Path], tmp: Path) -> dict[str, list[Path]]:
    """{version: one file per clip}: sync (as is), dubbed, late_0.2, late_0.4, late_1.0."""
    out: dict[str, list[Path]] = {"sync": list(clips), "dubbed": []}
    for i, clip in enumerate(clips):
        dur = probe(clip).duration
        other = clips[(i + DUB_FROM) % len(clips)]
        dub = tmp / f"{clip.stem}_dubbed.mp4"
        ffmpeg("-i", clip, "-stream_loop", "-1", "-i", other, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
               "-c:a", "aac", "-t", f"{dur:.3f}", dub)  # fmt: skip
        out["dubbed"].append(dub)
        for late in LATE_S:
            path = tmp / f"{clip.stem}_late{late}.mp4"
            ffmpeg("-i", clip, "-itsoffset", late, "-i", clip, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                   "-c:a", "aac", "-t", f"{dur:.3f}", path)  # fmt: skip
            out.setdefault(f"late_{late}", []).append(path)
    return out


def score(path: Path, out: Path, cfg: Config) -> tuple[list[dict], dict]:
    """(the sample jsons, the clip status) of one file through the clip pipeline."""
    ctx = BuildContext(out=out, cfg=cfg)
    clip_id = path.stem.replace(".", "p")  # sample keys hold no dot
    status = run_clip(Clip(clip_id, str(path), clip_id, 1), ctx)
    if status.status != "ok":
        return [], status.to_dict()
    return [json.loads(s["json"]) for s in read_samples(ctx.clip_tar(clip_id))], status.to_dict()


TARGETS = {"sync": (False, 0.10), "dubbed": (True, 0.90), "late_0.4": (True, 0.80)}  # (at least?, share flagged)


def against(version: str, share: float) -> str:
    """The flag rate's target, and whether it is met."""
    if version not in TARGETS:
        return ""
    at_least, target = TARGETS[version]
    met = share >= target if at_least else share <= target
    return f"   target {'>=' if at_least else '<='} {target:.0%}: {'met' if met else 'NOT met'}"


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (ffmpeg)."""
    t, c = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    return t.user + t.system + c.ru_utime + c.ru_stime


def main() -> int:
    clips = sorted(REALVIDS.glob("*.mp4"))
    if not clips:
        print(f"{REALVIDS} is absent: nothing to measure")
        return 0
    mouth = sys.argv[1] if len(sys.argv) > 1 else Config().filters.av_sync_mouth
    cfg = Config.from_dict({"faces": {"embeddings": False}, "filters": {"av_sync_mouth": mouth}})
    print(f"av_sync_mouth: {mouth}")
    clip_scores: dict[str, list[float]] = {}
    interview: dict[int, float] = {}  # the kept face's centre x in each second of the in-sync interview
    print(f"{'version':10} {'windows':>7} {'flagged':>8}   per clip: av_sync median (av_offset_s, av_confidence)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in versions(clips, Path(tmp)).items():
            flags, medians, cells = [], [], []
            for path in paths:
                metas, st = score(path, Path(tmp) / "out" / name, cfg)
                if name == "sync" and path.stem == "visualvoice_interview":
                    interview = {int(m["frame_time"]): (m["bbox"][0] + m["bbox"][2]) / 2 for m in metas}
                flags += [m["av_unsynced"] for m in metas if m.get("av_sync") is not None]
                if st.get("av_sync") is not None:
                    medians.append(st["av_sync"])
                    cells.append(f"{st['av_sync']:.2f}({st['av_offset_s']:+.2f},{st['av_confidence']:.2f})")
            clip_scores[name] = medians
            print(f"{name:10} {len(flags):7d} {np.mean(flags):8.0%}   {' '.join(cells)}{against(name, np.mean(flags))}")
        # cost: the same in-sync clips with the AV-sync score on and off, CPU seconds per written window
        n_windows, spent = 0, {}
        for on in (True, False):
            c = Config.from_dict({"faces": {"embeddings": False}, "filters": {"av_sync": on, "av_sync_mouth": mouth}})
            t0 = cpu_s()
            for path in clips:
                metas, _ = score(path, Path(tmp) / "cost" / str(on), c)
                n_windows += len(metas) if on else 0
            spent[on] = cpu_s() - t0
    worst_sync = min(clip_scores["sync"])
    best_other = max(s for k, v in clip_scores.items() if k != "sync" for s in v)
    verdict = "separated" if worst_sync > best_other else "NOT separated"
    print(f"\nlowest in-sync clip {worst_sync:.2f}, highest dubbed/late clip {best_other:.2f}: ", end="")
    print(f"{verdict} (margin {worst_sync - best_other:+.2f}; target: separated)")
    # the interview (1280 px wide): who speaks, from its frames: the left-hand man at 4-5 s, the right one at 11-12 s
    kept = {s: "left" if interview.get(s, 640) < 640 else "right" for s in (4, 11)}
    ok = kept == {4: "left", 11: "right"}
    print(f"interview: face kept at 4 s {kept[4]} (speaks: left), at 11 s {kept[11]} (speaks: right): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    ms = 1000 * (spent[True] - spent[False]) / max(n_windows, 1)
    print(f"AV-sync cost: {ms:.1f} CPU-ms per window ({n_windows} windows, score on minus off, all cores' CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
