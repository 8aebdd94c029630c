"""Train the Speech2Face voice encoder on the train split: audio feature → face feature, L2-normalised regression.

    python -m trainer.speech2face.train --shards out/demo --run out/runs/speech2face [--config tiny] [--steps N]

Input: `stft.npy` (or `mel.npy` with feature=mel), computed from `wav` when the sample lacks it (a 1 s window is
tiled to 6 s for the STFT). Target: `vggface.npy` when the shards have it, else `dlib.npy`. Writes
RUN/metrics.csv, RUN/samples/step_XXXXXX.png (each face over the batch's face nearest to the voice's prediction)
and RUN/checkpoint.pt; a run with a checkpoint resumes from it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.common import (
    CsvLog,
    autocast,
    batches,
    cpu_threads,
    dataclass_from_dict,
    grid,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    save_png,
)
from trainer.data import Decoder, loader, shard_urls, split_label_map, train_dataset
from trainer.speech2face.model import VoiceEncoder, VoiceEncoderArgs, normalized_l2


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50_000
    batch_size: int = 8  # the paper's batch size
    lr: float = 1e-3  # Adam (the paper: 0.001, decayed exponentially)
    lr_decay: float = 0.95  # per 10,000 steps
    betas: tuple[float, float] = (0.5, 0.9999)  # as in the paper
    buffer: int = 2000  # sample shuffle buffer
    epoch_batches: int = 1000  # batches per with_epoch "epoch" of resampled shards
    workers: int = 4  # DataLoader workers (the STFT is computed in them when the shards lack stft.npy)
    sample_every: int = 1000  # steps between retrieval grids
    ckpt_every: int = 1000  # steps between checkpoints (and at the end)
    seed: int = 1337
    device: str = "auto"  # cuda when there is one; bf16 autocast there
    threads: int = 0  # torch CPU threads (0: torch's default)
    target: str = "auto"  # the face feature to predict: vggface (fc7, 4096-D, the paper's), dlib (128-D), or auto:
    # vggface when the shards carry vggface.npy; an error when $VGGFACE_WEIGHTS is set and they do not
    model: VoiceEncoderArgs = field(default_factory=VoiceEncoderArgs)


CONFIGS = {
    "default": TrainConfig(),
    # debug on a laptop: seconds on CPU
    "tiny": TrainConfig(
        steps=40,
        batch_size=8,
        buffer=64,
        epoch_batches=50,
        workers=0,
        threads=1,  # tiny ops gain nothing from more threads; on a busy machine OpenMP's waits cost 20x
        sample_every=20,
        ckpt_every=20,
        model=VoiceEncoderArgs(channels=(8, 16, 16, 32), hidden=256),
    ),
}

LOSSES = ["loss", "cosine", "lr"]


def config_from_dict(d: dict) -> TrainConfig:
    """The TrainConfig a checkpoint stored (as a dict)."""
    return dataclass_from_dict(TrainConfig, d)


def resolve_target(shards, wanted: str = "auto") -> tuple[str, int]:
    """(target name, its size): vggface (4096) or dlib (128), as the train shards allow. Never a silent fallback:
    asking for vggface, or having $VGGFACE_WEIGHTS set, without vggface.npy in the shards is an error."""
    import os

    import webdataset as wds

    from pipeline.config import VGGFACE_WEIGHTS_ENV
    from trainer.data import face_feature

    if wanted not in ("auto", "vggface", "dlib"):
        raise ValueError(f"target must be auto, vggface or dlib, not {wanted!r}")
    s = next(iter(wds.WebDataset(shard_urls(shards, "train")[:1], shardshuffle=False, empty_check=False)))
    has_vgg = "vggface.npy" in s
    if wanted == "vggface" or (wanted == "auto" and os.environ.get(VGGFACE_WEIGHTS_ENV)):
        if not has_vgg:
            raise SystemExit(
                "error: the Speech2Face target is VGG-Face fc7 (vggface), but the shards have no vggface.npy: "
                f"add it with `voiceface vggface OUT --weights ${VGGFACE_WEIGHTS_ENV}`, or train with --target dlib"
            )
    target = "vggface" if (wanted == "vggface" or (wanted == "auto" and has_vgg)) else "dlib"
    if target == "dlib":
        print("face target: dlib (128-D dlib embedding, not the paper's VGG-Face fc7)")
    return target, int(face_feature(s, target).shape[0])


def train(shards, run, cfg: TrainConfig = CONFIGS["default"], resume: bool = True) -> dict:
    """Train (or resume) in RUN; returns the last step's losses."""
    with cpu_threads(cfg.threads):
        return _train(shards, run, cfg, resume)


def _train(shards, run, cfg: TrainConfig, resume: bool) -> dict:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.pt"
    device = pick_device(cfg.device)
    ck = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ck is not None:
        labels, args, start = ck["labels"], VoiceEncoderArgs(**ck["model_args"]), ck["step"]
        face_target = ck.get("target") or ("vggface" if args.out_dim == 4096 else "dlib")
    else:
        labels, start = split_label_map(shards, "train"), 0
        face_target, dim = resolve_target(shards, cfg.target)
        args = dataclasses.replace(cfg.model, out_dim=dim)
    torch.manual_seed(cfg.seed + start)
    model = VoiceEncoder(args).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_decay ** (s / 10_000))
    if ck is not None:
        model.load_state_dict(ck["state"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        print(f"resuming {ckpt_path} at step {start}")

    decoder = Decoder(labels, (args.feature, "feature", "face"), face_size=64, target=face_target)
    seed = cfg.seed + start  # a resumed run draws new samples rather than replaying the first ones
    data = batches(
        loader(
            train_dataset(shards, decoder, cfg.batch_size, cfg.epoch_batches, cfg.buffer, seed),
            cfg.workers,
            pin_memory=device.startswith("cuda"),
        )
    )
    log = CsvLog(run / "metrics.csv", LOSSES, steps=(start, cfg.steps))
    t0, last = time.time(), {}
    print(f"face target: {face_target} ({args.out_dim}-D)")
    model.train()
    for step in range(start, cfg.steps):
        b = next(data)
        x, target = b[args.feature].to(device, non_blocking=True), b["feature"].to(device, non_blocking=True)
        with autocast(device):
            pred = model(x)
        loss = normalized_l2(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(pred.float(), target.float()).mean()
        last = dict(loss=float(loss.detach()), cosine=float(cos), lr=sched.get_last_lr()[0])
        log.log(step + 1, last)
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (done - start) * cfg.batch_size / (time.time() - t0)
            print(f"step {done}: loss {last['loss']:.4f} cosine {last['cosine']:.4f} ({rate:.0f} samples/s)")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            # each face over the batch's face whose feature is nearest to the voice's prediction
            sim = (
                torch.nn.functional.normalize(pred.float(), dim=1)
                @ torch.nn.functional.normalize(target.float(), dim=1).T
            )
            faces = b["face"].permute(0, 2, 3, 1).numpy()
            picked = faces[sim.argmax(1).cpu().numpy()]
            save_png(run / "samples" / f"step_{done:06d}.png", grid(np.concatenate([faces, picked])))
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            buf = dict(
                model="speech2face",
                model_args=asdict(args),
                config=asdict(cfg),
                step=done,
                state=model.state_dict(),
                opt=opt.state_dict(),
                sched=sched.state_dict(),
                labels=labels,
                target=face_target,
            )
            save_checkpoint(ckpt_path, buf)
    log.close()
    return last


def load_model(path, device: str = "cpu") -> tuple[VoiceEncoder, dict]:
    """A trained voice encoder (eval mode) and its checkpoint dict."""
    ck = load_checkpoint(path, device)
    model = VoiceEncoder(VoiceEncoderArgs(**ck["model_args"])).to(device)
    model.load_state_dict(ck["state"])
    return model.eval(), ck


if __name__ == "__main__":
    import sys

    from trainer.cli import main

    raise SystemExit(main(["train", "--model", "speech2face", *sys.argv[1:]]))
