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

    def __init__(self, path: Path, names: list[str], steps: tuple[int, int] | None = None):
        self.names = names
        new = not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a", newline="")
        self.w = csv.writer(self.f)
        if new:
            self.w.writerow(["step", *names])
        self.progress = None
        if steps is not None:  # (first step, last step): a bar with an ETA on a terminal, lines otherwise
            from pipeline.progress import Progress

            self.progress = Progress(steps[1] - steps[0], "training", "steps").__enter__()

    def log(self, step: int, values: dict[str, float]) -> None:
        self.w.writerow([step, *(f"{values[n]:.6g}" for n in self.names)])
        self.f.flush()
        if self.progress is not None:
            self.progress.advance()

    def close(self) -> None:
        self.f.close()
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """metrics.csv → column name → values (step included)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


LOSS_COLOURS = ("#4a78b5", "#b5814a", "#5aa05a", "#a04a8a", "#8a8a3a", "#3a8a8a")


def loss_plot_svg(metrics: dict[str, list[float]], width: int = 640, height: int = 260) -> str:
    """The losses of metrics.csv against the step, as one inline SVG with both axes (no plotting library)."""
    steps = metrics.get("step", [])
    losses = {k: v for k, v in metrics.items() if k != "step" and v and all(np.isfinite(v))}
    if len(steps) < 2 or not losses:
        return "<p>no losses logged yet</p>"
    left, right, top, bottom = 56, 150, 10, 30
    pw, ph = width - left - right, height - top - bottom
    lo = min(min(v) for v in losses.values())
    hi = max(max(v) for v in losses.values())
    hi = hi if hi > lo else lo + 1.0
    s0, s1 = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    x = lambda s: left + pw * (s - s0) / (s1 - s0)  # noqa: E731
    y = lambda v: top + ph * (hi - v) / (hi - lo)  # noqa: E731
    parts = [
        f"<line x1='{left}' x2='{left}' y1='{top}' y2='{top + ph}' stroke='#888'/>",
        f"<line x1='{left}' x2='{left + pw}' y1='{top + ph}' y2='{top + ph}' stroke='#888'/>",
        f"<text x='{left + pw / 2:.0f}' y='{height - 4}' font-size='11' text-anchor='middle'>step</text>",
    ]
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f"<text x='{left - 6}' y='{y(v) + 4:.1f}' font-size='10' text-anchor='end'>{v:.3g}</text>")
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#eee'/>")
    for st in (s0, (s0 + s1) / 2, s1):
        parts.append(f"<text x='{x(st):.1f}' y='{top + ph + 14}' font-size='10' text-anchor='middle'>{st:.0f}</text>")
    for i, (name, values) in enumerate(sorted(losses.items())):
        colour = LOSS_COLOURS[i % len(LOSS_COLOURS)]
        points = " ".join(f"{x(st):.1f},{y(v):.1f}" for st, v in zip(steps, values, strict=False))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>")
        parts.append(f"<text x='{left + pw + 8}' y='{top + 14 * (i + 1)}' font-size='11' fill='{colour}'>{name}</text>")
    return f"<svg class='losses' width='{width}' height='{height}' role=img>{''.join(parts)}</svg>"


def write_loss_plot(run: str | Path) -> Path | None:
    """RUN/losses.svg from RUN/metrics.csv (after training; the eval page shows it too)."""
    path = Path(run) / "metrics.csv"
    if not path.exists():
        return None
    out = Path(run) / "losses.svg"
    out.write_text(loss_plot_svg(read_metrics(path)).replace("<svg ", "<svg xmlns='http://www.w3.org/2000/svg' ", 1))
    return out


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
