"""What both trainers share: device and precision, the CSV log, atomic checkpoints, sample grids."""

from __future__ import annotations

import csv
import dataclasses
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch


def dataclass_from_dict(cls, d: dict):
    """A (frozen) dataclass back from `asdict()` output, e.g. a checkpoint's config: nested dataclass fields are
    rebuilt and lists become tuples again, so the result equals the original."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = dataclass_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def pick_device(name: str = "auto") -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def autocast(device: str):
    """bf16 autocast for forward passes on CUDA (no loss scaling needed); full fp32 on CPU."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to n (0: unchanged) for the block, then restored."""
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def batches(dataloader):
    """Batches forever, epoch after epoch (each epoch is `with_epoch` batches of resampled shards). The same
    loader is iterated again, so persistent workers keep their dataset copies and draw new shards each epoch."""
    while True:
        yield from dataloader


class CsvLog:
    """RUN/metrics.csv: a header `step,<names>` once, then one row a step; appends when resuming."""

    def __init__(self, path: Path, names: list[str]):
        self.names = names
        new = not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a", newline="")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(["step", *names])

    def log(self, step: int, values: dict[str, float]) -> None:
        self.w.writerow([step, *(f"{values[n]:.6g}" for n in self.names)])
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """metrics.csv → column name → values (step included)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write to a temporary name, then rename: a kill mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → uint8 (N, H, W, 3)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """uint8 (N, H, W, 3) → one uint8 image, `cols` a row, 2 px gaps."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + 2) + 2, min(n, cols) * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = im
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
