"""Trainer loader figures (`make bench`): samples/s of the training pipeline (resampled shards, shuffle buffer,
decoding, batching) through a torch DataLoader with 1 and 2 workers. Target: >= 2,000 samples/s per worker for
Wav2Pix's inputs (wav + 64 px face + label).

The shards are synthetic: the demo build's samples (out/demo, built first when missing) copied under new keys into
8 train shards of 500 samples, so the loader reads real JPEG crops and WAV windows at a realistic volume.
The wall-clock figures depend on what else runs on the machine, so the decoding cost is also given in samples
per CPU-second of one in-process loader (one dedicated core). Speech2Face's input is also timed when the STFT
must be computed from the wav (shards without stft.npy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "out" / "bench" / "loader"


def demo_shards() -> Path:
    """The demo built with the wav2pix preset, as a Wav2Pix user would train on it (its samples carry the 64 and
    128 px faces, so the loader need not shrink the 224 px crop)."""
    demo = ROOT / "out" / "bench" / "demo-wav2pix"
    if not (demo / "shards").is_dir():
        # in a child process: Prefect's threads and temporary server in this one would break forked loader workers
        cmd = [sys.executable, "-m", "flows.cli", "demo", "--preset", "wav2pix", "--out", str(demo)]
        subprocess.run([*cmd, "--media", str(ROOT / "out" / "demo-media")], check=True, cwd=ROOT)
    return demo


def synthetic_shards(n_shards: int = 8, per_shard: int = 500) -> Path:
    """Demo samples copied under new keys into n_shards train shards (written once)."""
    import webdataset as wds

    d = OUT / "wav2pix" / "shards"
    if len(list(d.glob("train-*.tar"))) == n_shards:
        return d.parent
    d.mkdir(parents=True, exist_ok=True)
    urls = sorted(str(p) for p in (demo_shards() / "shards").glob("*.tar"))
    src = [s for s in wds.WebDataset(urls, shardshuffle=False) if "dlib.npy" in s]
    for i in range(n_shards):
        with wds.TarWriter(str(d / f"train-{i:06d}.tar"), mtime=0) as w:  # as the pipeline packs shards
            for j in range(per_shard):
                s = src[(i * per_shard + j) % len(src)]
                w.write({k: v for k, v in s.items() if not k.startswith("__")} | {"__key__": f"bench{i}-{j:05d}"})
    return d.parent


def rate(shards: Path, fields, workers: int, batches: int, batch_size: int = 64, cpu: bool = False) -> float:
    """Samples/s after the workers' first batch (start-up excluded); with cpu (workers=0): samples per CPU-second
    of this process, what one dedicated core gives whatever else the machine is doing."""
    from trainer.data import Decoder, label_map, loader, train_dataset

    dec = Decoder(label_map(shards), fields, face_size=64, wav_len=16384)
    ds = train_dataset(shards, dec, batch_size, epoch_batches=batches + 2 * max(workers, 1), buffer=1000)
    it = iter(loader(ds, workers))
    for _ in range(max(workers, 1)):
        next(it)
    clock = time.process_time if cpu else time.perf_counter
    t, n = clock(), 0
    for _ in range(batches):
        n += len(next(it)["label"])
    return n / (clock() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100, help="batches of 64 timed per setting")
    args = ap.parse_args()
    shards = synthetic_shards()
    print("trainer loader, batches of 64 from 8 resampled shards of 500 (copies of the wav2pix-preset demo's samples)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall-clock figures share them)")
    print(f"{'input':34s} {'workers':>7s} {'samples/s':>10s} {'per worker':>11s}")
    for name, fields, batches in (
        ("wav2pix: wav + 64 px face + label", ("wav", "face", "label"), args.batches),
        ("speech2face: STFT from wav + dlib", ("stft", "feature"), max(args.batches // 10, 5)),
    ):
        r = rate(shards, fields, 0, batches, cpu=True)
        print(f"{name:34s} {'1 core':>7s} {r:10.0f} {r:11.0f}   (in-process, per CPU-second)")
        for workers in (1, 2):
            r = rate(shards, fields, workers, batches)
            print(f"{name:34s} {workers:7d} {r:10.0f} {r / workers:11.0f}")


if __name__ == "__main__":
    main()
