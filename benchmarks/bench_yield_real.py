"""Yield on real single-speaker talking heads: how many of the seconds with speech end up as samples in the shards.

The 8 single-speaker clips of ../shared/data/realvids (visualvoice_interview.mp4, a split-screen interview with two
people, is left out) are built with the default config through the real build: plan_build, run_clip per clip,
finish_build with the review queue's gate (what `voiceface build` does, without the Prefect server).

Speech seconds (the denominator) are the seconds of each clip's whole audio that the pipeline's own speech detector
(webrtcvad with the SpeechConfig defaults, 30 ms frames, one state across the clip) calls speech. They do not depend
on windows or filters, so a filter that rejects more cannot make the yield look better. Each speech frame belongs to
the window holding its centre, or to no window (the tail shorter than a window is never cut). The yield is the
share of speech seconds that lie in windows written to the shards; every other speech second is counted under the
fate of its window: rejected (the window's reason code), held by the review queue (its band reasons), or never cut.
Samples x window seconds and the window-level share (written windows / windows with speech ratio >=
speech.min_speech_ratio) are printed too.

    .venv/bin/python benchmarks/bench_yield_real.py [--out DIR] [--keep] [--blur]

--blur also measures the blur band's two measures (sharpness, relative_sharpness) on the same clips blurred at the
source (ffmpeg gblur, re-encoded with libx264 crf 18), per clip and blur sigma, with the sigma it comes to in the
224 crop (from the eye distance: dlib's chip puts the eye centres 78.5 px apart).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sqlite3
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import SAMPLE_RATE, Config, SpeechConfig  # noqa: E402
from pipeline.media import decode_audio  # noqa: E402
from pipeline.speech import new_vad  # noqa: E402

REALVIDS = ROOT.parent / "shared" / "data" / "realvids"
MULTI_SPEAKER = {"visualvoice_interview"}  # two people on a split screen: not a single-speaker clip


def single_speaker_clips(folder: Path = REALVIDS) -> list[Path]:
    return [p for p in sorted(folder.glob("*.mp4")) if p.stem not in MULTI_SPEAKER]


def write_manifest(clips: list[Path], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "id", "identity"])
        for p in clips:
            w.writerow([str(p), p.stem, p.stem])
    return path


def build(manifest: Path, out: Path, cfg: Config | None = None) -> dict:
    """The real build (flows.build's steps without Prefect): every clip, then shards through the review gate."""
    from pipeline.build import finish_build, plan_build
    from pipeline.clip import run_clip
    from pipeline.review.queue import prepare_review

    plan = plan_build(manifest, out, cfg or Config())
    for clip in plan.todo:
        run_clip(clip, plan.ctx)
    return finish_build(plan, prepare_review)


def speech_frames(audio, cfg: SpeechConfig) -> list[tuple[int, bool]]:
    """(centre sample, is speech) of each VAD frame over the whole audio, one VAD state across it."""
    frame = SAMPLE_RATE * cfg.vad_frame_ms // 1000
    vad = new_vad(cfg)
    data = audio.astype("<i2").tobytes()
    return [
        (i * frame + frame // 2, vad.is_speech(data[i * frame * 2 : (i + 1) * frame * 2], SAMPLE_RATE))
        for i in range(len(audio) // frame)
    ]


def window_fates(out: Path) -> dict[str, dict[int, str]]:
    """clip id -> window index -> "written", "rejected:<reason>" or "held:<band reasons>" (from the shards,
    OUT/.work/rejected and the review queue)."""
    fates: dict[str, dict[int, str]] = {}

    def put(key: str, fate: str) -> None:
        clip_id, index = key.rsplit("-", 1)
        fates.setdefault(clip_id, {})[int(index)] = fate

    for log in sorted((out / ".work" / "rejected").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            r = json.loads(line)
            put(r["key"], f"rejected:{r['reason']}")
    db = out / "review" / "review.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            for key, reasons, queued in conn.execute("SELECT key, reasons, queued FROM items"):
                if queued:
                    put(key, "held:" + "+".join(sorted(json.loads(reasons))))
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as t:
            for name in t.getnames():
                put(name.split(".", 1)[0], "written")  # a held window that a reviewer accepted is written
    return fates


def measure(out: Path, clips: list[Path], cfg: Config | None = None) -> dict:
    """Per clip and in total: speech seconds, speech seconds written, samples, and speech seconds lost by fate."""
    cfg = cfg or Config()
    W = cfg.speech.window_samples
    frame_s = cfg.speech.vad_frame_ms / 1000
    fates = window_fates(out)
    rows = {json.loads(x)["id"]: json.loads(x) for x in (out / "clips.jsonl").read_text().splitlines()}
    per_clip = {}
    for p in clips:
        audio = decode_audio(p, 0.0, None)
        n_windows = len(audio) // W
        fate = fates.get(p.stem, {})
        lost: Counter = Counter()
        speech = written = 0.0
        for centre, is_speech in speech_frames(audio, cfg.speech):
            if not is_speech:
                continue
            speech += frame_s
            k = centre // W
            f = "never cut (tail)" if k >= n_windows else fate.get(k, f"no record ({rows[p.stem]['status']})")
            if f == "written":
                written += frame_s
            else:
                lost[f] += frame_s
        samples = sum(f == "written" for f in fate.values())
        per_clip[p.stem] = {
            "speech_s": round(speech, 2),
            "written_speech_s": round(written, 2),
            "samples": samples,
            "sample_s": round(samples * W / SAMPLE_RATE, 2),
            "windows": n_windows,
            "speech_windows": sum(
                not f.startswith("rejected:no_speech") for f in fate.values()
            ),  # webrtcvad ratio >= speech.min_speech_ratio
            "yield": round(written / speech, 3) if speech else None,
            "lost_s": {k: round(v, 2) for k, v in sorted(lost.items())},
            "fates": {k: fate[k] for k in sorted(fate)},
        }
    total_lost: Counter = Counter()
    for c in per_clip.values():
        total_lost.update(c["lost_s"])
    speech = sum(c["speech_s"] for c in per_clip.values())
    written = sum(c["written_speech_s"] for c in per_clip.values())
    samples = sum(c["samples"] for c in per_clip.values())
    speech_windows = sum(c["speech_windows"] for c in per_clip.values())
    return {
        "clips": per_clip,
        "speech_s": round(speech, 2),
        "written_speech_s": round(written, 2),
        "samples": samples,
        "sample_s": round(samples * W / SAMPLE_RATE, 2),
        "speech_windows": speech_windows,
        "yield": round(written / speech, 3) if speech else None,
        "window_yield": round(samples / speech_windows, 3) if speech_windows else None,
        "lost_s": {k: round(v, 2) for k, v in sorted(total_lost.items(), key=lambda kv: -kv[1])},
    }


def report(m: dict) -> str:
    lines = [
        f"{'clip':30s} {'speech s':>8} {'written':>8} {'yield':>6} {'samples':>7} {'x 1 s':>6}  lost speech s by fate",
    ]
    for name, c in m["clips"].items():
        lost = ", ".join(f"{k} {v:.2f}" for k, v in c["lost_s"].items()) or "-"
        y = f"{c['yield']:.0%}" if c["yield"] is not None else "-"
        lines.append(
            f"{name[:30]:30s} {c['speech_s']:8.2f} {c['written_speech_s']:8.2f} {y:>6} {c['samples']:7d} "
            f"{c['sample_s']:6.1f}  {lost}"
        )
    lines.append(
        f"{'total':30s} {m['speech_s']:8.2f} {m['written_speech_s']:8.2f} {m['yield']:6.1%} {m['samples']:7d} "
        f"{m['sample_s']:6.1f}"
    )
    lines.append("")
    share = f"{m['yield']:.1%}"
    lines.append(f"yield: {m['written_speech_s']:.2f} of {m['speech_s']:.2f} speech seconds in the shards ({share})")
    lines.append(
        f"windows: {m['samples']} written of {m['speech_windows']} with speech ratio >= speech.min_speech_ratio "
        f"({m['window_yield']:.1%})"
    )
    lines.append("speech seconds lost, by fate:")
    for k, v in m["lost_s"].items():
        lines.append(f"  {k:40s} {v:6.2f} s")
    return "\n".join(lines)


BLUR_SIGMAS = (0, 1, 2, 3, 4, 6)  # ffmpeg gblur sigma, source pixels
CROP_EYE_PX = 0.5255 * 224 / 1.5  # eye-centre distance in a 224 crop with padding 0.25 (dlib's chip template)


def blur_sweep(clips: list[Path], work: Path) -> list[dict]:
    """(clip, source sigma, crop sigma, min/max sharpness and relative sharpness of its faces, windows held or
    rejected as blurry) for each clip blurred at the source by each of BLUR_SIGMAS."""
    import subprocess

    import numpy as np

    from pipeline.clip import BuildContext, run_clip
    from pipeline.records import Clip
    from pipeline.review.queue import queue_reasons
    from pipeline.tars import read_samples

    cfg = Config.from_dict({"filters": {"av_sync": False, "music_noise": False}, "faces": {"embeddings": False}})
    ctx = BuildContext(out=work / "blur", cfg=cfg)
    rows = []
    for p in clips:
        for sigma in BLUR_SIGMAS:
            src, cid = p, f"{p.stem}_g{sigma}"
            if sigma:
                src = work / f"{cid}.mp4"
                subprocess.run(
                    ["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(p), "-vf", f"gblur=sigma={sigma}",
                     "-c:v", "libx264", "-crf", "18", "-preset", "veryfast", "-c:a", "copy", str(src)],
                    check=True,
                )  # fmt: skip
            run_clip(Clip(cid, str(src), cid, 1), ctx)
            tar, log = ctx.clip_tar(cid), ctx.rejected_log(cid)
            metas = [json.loads(s["json"]) for s in read_samples(tar)] if tar.exists() else []
            rejected = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            faces = [(m["sharpness"], m["relative_sharpness"]) for m in metas]
            faces += [(r["measures"]["sharpness"], r["measures"]["relative_sharpness"]) for r in rejected
                      if "relative_sharpness" in r["measures"]]  # fmt: skip
            eyes = [np.linalg.norm(np.mean(m["landmarks5"][0:2], 0) - np.mean(m["landmarks5"][2:4], 0)) for m in metas]
            blurry = sum("blurry" in queue_reasons(m, Config().review) for m in metas)
            blurry += sum(r["reason"] == "blurry" for r in rejected)
            a = np.array(faces) if faces else np.full((1, 2), np.nan)
            rows.append({
                "clip": p.stem, "sigma": sigma,
                "crop_sigma": round(sigma * CROP_EYE_PX / float(np.median(eyes)), 2) if eyes else None,
                "faces": len(faces), "blurry": blurry,
                "sharpness": (float(a[:, 0].min()), float(a[:, 0].max())),
                "relative": (float(a[:, 1].min()), float(a[:, 1].max())),
            })  # fmt: skip
    return rows


def blur_report(rows: list[dict]) -> str:
    r = Config().review
    lines = [
        f"blur band: sharpness < {r.min_sharpness} or relative_sharpness < {r.min_relative_sharpness} "
        "(faces held or rejected as blurry of the faces found)",
        f"{'clip':30s} {'gblur':>5} {'crop':>5} {'sharpness':>15} {'relative':>15} {'blurry':>7}",
    ]
    for x in rows:
        crop = f"{x['crop_sigma']:.1f}" if x["crop_sigma"] is not None else "-"
        lines.append(
            f"{x['clip'][:30]:30s} {x['sigma']:5} {crop:>5} {x['sharpness'][0]:7.1f}-{x['sharpness'][1]:<7.1f} "
            f"{x['relative'][0]:7.4f}-{x['relative'][1]:<7.4f} {x['blurry']:3d}/{x['faces']:<3d}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="build here (default: a temporary folder, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    ap.add_argument("--blur", action="store_true", help="also measure the blur band on blurred versions of the clips")
    args = ap.parse_args()
    if not REALVIDS.is_dir():
        print(f"{REALVIDS} is absent: nothing to measure")
        return 0
    clips = single_speaker_clips()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_yield_"))
    try:
        manifest = write_manifest(clips, out.parent / f"{out.name}.manifest.csv")
        build(manifest, out)
        m = measure(out, clips)
        print(f"{len(clips)} single-speaker clips, default config, built into {out}\n")
        print(report(m))
        if args.json:
            print(json.dumps(m, indent=1))
        if args.blur:
            print()
            print(blur_report(blur_sweep(clips, out / ".blur")))
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            (out.parent / f"{out.name}.manifest.csv").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
