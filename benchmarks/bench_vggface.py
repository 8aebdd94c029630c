"""VGG-Face throughput (`make bench-gpu`): faces/s per batch size and precision, and fp32-vs-bf16/fp16 agreement.

What is timed: `VGGFaceExtractor.stream` over batches of uint8 224x224 crops already decoded in host memory, i.e.
the pass's GPU path: copy into pinned memory, non-blocking upload, preprocessing, the network under autocast,
float16 features back in host memory. Each setting gets warm-up batches first (cuDNN autotuning, compilation).
JPEG decoding is timed on its own, on the pass's decode threads, since on a fast GPU it can be the limit.

The crops are the public-domain astronaut and Grace Hopper photos, cropped around the face with random shifts
and zooms. Without $VGGFACE_WEIGHTS the network gets random He-normal weights (saved to a temporary
vgg_face_dag.pth and loaded like the real file): throughput does not depend on the weights' values, and the
agreement figures then describe random weights. On a machine without CUDA only a tiny CPU run is made.
Figures are printed and written to out/bench/bench_vggface.json.

    python benchmarks/bench_vggface.py [--compile] [--batch-sizes 32,64,128,256] [--precisions fp32,bf16,fp16]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import VGGFACE_WEIGHTS_ENV, VGGFaceConfig
from pipeline.demo.synth import astronaut, grace_hopper
from pipeline.models.vggface import BLOCKS, VGGFace, VGGFaceExtractor, decode_crop, init_random_

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"


def gmac_per_face() -> float:
    """Multiply-adds of one 224x224 forward pass up to fc7 (the 15.5 G usually quoted for VGG16)."""
    macs, side = 0, 224
    for block in BLOCKS:
        for _, cin, cout in block:
            macs += side * side * cout * cin * 9
        side //= 2
    return (macs + 25088 * 4096 + 4096 * 4096) / 1e9


def face_crops(n: int, seed: int = 0) -> np.ndarray:
    """n different uint8 (224, 224, 3) face crops: the two photos, shifted and zoomed at random."""
    rng = np.random.default_rng(seed)
    photos = [astronaut(), grace_hopper()]
    out = np.empty((n, 224, 224, 3), np.uint8)
    for i in range(n):
        p = photos[i % 2]
        l, t, r, b = p.face_box
        half = (r - l) * rng.uniform(0.8, 1.2)
        cx, cy = (l + r) / 2 + rng.uniform(-0.1, 0.1) * half, (t + b) / 2 + rng.uniform(-0.1, 0.1) * half
        h, w = p.image.shape[:2]
        half = min(half, cx, cy, w - cx, h - cy)  # stay inside the photo
        box = (cx - half, cy - half, cx + half, cy + half)
        out[i] = np.asarray(Image.fromarray(p.image).resize((224, 224), Image.BILINEAR, box=box))
    return out


def time_stream(ex: VGGFaceExtractor, crops: np.ndarray, batches: int, warmup: int) -> float:
    """Seconds for `batches` full batches after `warmup` ones."""
    bs = ex.cfg.batch_size
    pool = np.concatenate([crops] * (bs // len(crops) + 1))[:bs]
    for _ in ex.stream(pool for _ in range(warmup)):
        pass
    t0 = time.perf_counter()
    for _ in ex.stream(pool for _ in range(batches)):
        pass
    return time.perf_counter() - t0


def decode_rate(crops: np.ndarray, workers: int, n: int) -> float:
    jpgs = []
    for c in crops:
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, "JPEG", quality=95)
        jpgs.append(buf.getvalue())
    todo = [jpgs[i % len(jpgs)] for i in range(n)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode_crop, todo[:workers]))
        t0 = time.perf_counter()
        list(pool.map(decode_crop, todo, chunksize=16))
        return n / (time.perf_counter() - t0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="32,64,128,256")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (adds warm-up time)")
    ap.add_argument("--seconds", type=float, default=3.0, help="about this long per setting")
    ap.add_argument("--agreement-faces", type=int, default=64)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({cpu_name()})"
    print(f"device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores")
    if not cuda:
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        print(f"no GPU ({why}): a tiny CPU run only (batch 4, fp32 and bf16); GPU figures need a CUDA machine")
        batch_sizes, precisions, agree_n = [4], ["fp32", "bf16"], 4
    else:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        precisions = args.precisions.split(",")
        agree_n = args.agreement_faces
    flop = 2 * gmac_per_face()

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.environ.get(VGGFACE_WEIGHTS_ENV)
        if weights:
            print(f"weights: {weights}")
        else:
            weights = str(Path(tmp) / "vgg_face_dag.pth")
            torch.save(init_random_(VGGFace()).state_dict(), weights)
            print(f"weights: random ({VGGFACE_WEIGHTS_ENV} not set); throughput does not depend on the values")
        crops = face_crops(max(agree_n, 64))
        base = VGGFaceConfig(device="cuda" if cuda else "cpu", compile=args.compile)
        rows = []
        print(f"\n{'precision':>9} {'batch':>6} {'faces/s':>9} {'ms/batch':>9} {'TFLOP/s':>8}")
        for precision in precisions:
            for bs in batch_sizes:
                ex = VGGFaceExtractor(dataclasses.replace(base, precision=precision, batch_size=bs), weights)
                if cuda:  # warm up (autotuning, compiling), then batches for about --seconds
                    n = max(3, int(args.seconds / time_stream(ex, crops, 1, warmup=3)))
                    secs = time_stream(ex, crops, n, warmup=0)
                else:
                    n, secs = 2, time_stream(ex, crops, 2, warmup=1)
                rate = n * bs / secs
                r = dict(precision=precision, batch_size=bs, faces_per_s=round(rate, 1), batches=n,
                         ms_per_batch=round(1000 * secs / n, 2), tflops=round(rate * flop / 1e3, 1))  # fmt: skip
                rows.append(r)
                print(f"{precision:>9} {bs:>6} {rate:>9.1f} {r['ms_per_batch']:>9.2f} {r['tflops']:>8.1f}")
                del ex
                if cuda:
                    torch.cuda.empty_cache()

        workers = base.decode_workers
        decode = decode_rate(crops, workers, 2000 if cuda else 400)
        print(f"\nJPEG decode of 224 px crops on {workers} threads: {decode:.0f} faces/s")

        agreement, feats = {}, {}
        for precision in ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]:
            cfg = dataclasses.replace(base, precision=precision, batch_size=min(64, agree_n), compile=False)
            feats[precision] = VGGFaceExtractor(cfg, weights).features(crops[:agree_n])
            if precision != "fp32":
                c = cosine(feats["fp32"], feats[precision])
                agreement[precision] = dict(min=round(float(c.min()), 6), mean=round(float(c.mean()), 6))
                print(f"fp32 vs {precision} cosine over {agree_n} faces: min {c.min():.6f}, mean {c.mean():.6f}")

    best = max(rows, key=lambda r: r["faces_per_s"])
    print(f"\nbest: {best['faces_per_s']:.0f} faces/s ({best['precision']}, batch {best['batch_size']}); "
          f"{flop:.1f} GFLOP a face ({flop / 2:.2f} G multiply-adds)")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    result = dict(
        device=device,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cpu_cores=os.cpu_count(),
        compile=args.compile,
        weights="random" if not os.environ.get(VGGFACE_WEIGHTS_ENV) else os.environ[VGGFACE_WEIGHTS_ENV],
        gflop_per_face=round(flop, 2),
        throughput=rows,
        jpeg_decode_faces_per_s=round(decode, 1),
        decode_workers=workers,
        agreement_vs_fp32=agreement,
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        date=time.strftime("%Y-%m-%d"),
    )
    (OUT / "bench_vggface.json").write_text(json.dumps(result, indent=2))
    print(f"written to {OUT / 'bench_vggface.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
