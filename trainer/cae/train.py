"""Train the CAE on the train split with triplets drawn inside each batch: for each sample (voice and face of B) the
proposal is the face of another sample whose speaker differs (A != B). Losses: L1 to B's face (`rec`), B's identity
by the face classifier (`g_id`), L1 of the plain autoencoder with A = B (`rec_self`); the face classifier learns on
real faces (`c_real`) and the voice network on speaker identity (`e_id`). Adam, lr 2e-4, betas (0.5, 0.999).

    voiceface train --model cae --shards out/demo --run out/runs/cae [--config tiny] [--steps N]

Needs shards built with `--preset cae` (or voice2face): utterances (`utt.npy`), 64 px faces, labels.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.cae.model import CAE, CAEArgs
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
    to_uint8,
)
from trainer.data import Decoder, loader, split_label_map, train_dataset
from trainer.voice2face.train import voice_batch


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50_000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    nframe_range: tuple[int, int] = (300, 800)  # voice crop length, one per batch
    lambda_id: float = 0.1  # weight of the identity loss on generated faces
    lambda_self: float = 1.0  # weight of the autoencoder loss (proposal = target)
    buffer: int = 2000
    epoch_batches: int = 1000
    workers: int = 4
    sample_every: int = 1000
    ckpt_every: int = 1000
    seed: int = 1337
    device: str = "auto"
    threads: int = 0
    model: CAEArgs = field(default_factory=CAEArgs)


CONFIGS = {
    "default": TrainConfig(),
    # debug on a laptop: seconds on CPU
    "tiny": TrainConfig(
        steps=40,
        batch_size=8,
        lr=1e-3,
        nframe_range=(100, 160),
        buffer=64,
        epoch_batches=50,
        workers=0,
        threads=1,
        sample_every=20,
        ckpt_every=20,
        model=CAEArgs(
            voice_channels=(32, 32, 64, 64), embed_dim=32, enc_channels=(16, 32, 32, 64), cls_channels=(8, 16, 16, 32)
        ),  # fmt: skip
    ),
}

LOSSES = ["rec", "rec_self", "g_id", "c_real", "e_id"]


def config_from_dict(d: dict) -> TrainConfig:
    return dataclass_from_dict(TrainConfig, d)


def proposals(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the index of the nearest later sample (cyclically) of another speaker, and whether one
    exists (a batch of one speaker has none)."""
    n = len(labels)
    idx = torch.arange(n, device=labels.device)
    pick, found = idx.clone(), torch.zeros(n, dtype=torch.bool, device=labels.device)
    for shift in range(n - 1, 0, -1):  # the last assignment wins: the smallest shift with another speaker
        j = (idx + shift) % n
        other = labels[j] != labels
        pick = torch.where(other, j, pick)
        found |= other
    return pick, found


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
        labels, args, start = ck["labels"], CAEArgs(**ck["model_args"]), ck["step"]
    else:
        labels, start = split_label_map(shards, "train"), 0
        args = dataclasses.replace(cfg.model, n_classes=max(len(labels), 1))
    torch.manual_seed(cfg.seed + start)
    rng = random.Random(cfg.seed + start)
    model = CAE(args).to(device)
    adam = dict(lr=cfg.lr, betas=cfg.betas)
    opt_g = torch.optim.Adam(
        [*model.encoder.parameters(), *model.film.parameters(), *model.decoder.parameters()], **adam
    )
    opt_c = torch.optim.Adam(model.face_cls.parameters(), **adam)
    opt_e = torch.optim.Adam([*model.voice.parameters(), *model.voice_cls.parameters()], **adam)
    if ck is not None:
        model.load_state_dict(ck["state"])
        for opt, name in ((opt_g, "opt_g"), (opt_c, "opt_c"), (opt_e, "opt_e")):
            opt.load_state_dict(ck[name])
        print(f"resuming {ckpt_path} at step {start}")

    decoder = Decoder(labels, ("utt", "face", "label"), face_size=64, utt_frames=cfg.nframe_range[1])
    data = batches(
        loader(
            train_dataset(shards, decoder, cfg.batch_size, cfg.epoch_batches, cfg.buffer, cfg.seed + start),
            cfg.workers,
            pin_memory=device.startswith("cuda"),
        )
    )
    log = CsvLog(run / "metrics.csv", LOSSES, steps=(start, cfg.steps))
    fixed, t0, last = None, time.time(), {}
    model.train()
    for step in range(start, cfg.steps):
        b = next(data)
        voice = voice_batch(b["utt"], cfg.nframe_range, rng).to(device)
        face = b["face"].to(device).float() / 127.5 - 1
        y = b["label"].to(device)
        pick, found = proposals(y)
        with autocast(device):
            emb = model.voice(voice.transpose(1, 2)).flatten(1)
            e_id = F.cross_entropy(model.voice_cls(emb).float(), y, ignore_index=-1)
            c_real = F.cross_entropy(model.face_cls(face).float(), y, ignore_index=-1)
        opt_e.zero_grad(set_to_none=True)
        e_id.backward()
        opt_e.step()
        opt_c.zero_grad(set_to_none=True)
        c_real.backward()
        opt_c.step()

        e = F.normalize(emb.detach())
        with autocast(device):
            out = model.generate(face[pick], e)
            same = model.generate(face, e)
            rec = (out.float() - face).abs().mean((1, 2, 3))
            rec = rec[found].mean() if found.any() else rec.sum() * 0
            rec_self = F.l1_loss(same.float(), face)
            g_id = F.cross_entropy(model.face_cls(out).float(), y, ignore_index=-1)
        opt_g.zero_grad(set_to_none=True)
        (rec + cfg.lambda_self * rec_self + cfg.lambda_id * g_id).backward()
        opt_g.step()
        if fixed is None and found.any():
            fixed = (face[pick][:8].detach(), voice[:8], face[:8])

        last = dict(rec=rec, rec_self=rec_self, g_id=g_id, c_real=c_real, e_id=e_id)
        last = {k: float(v.detach()) for k, v in last.items()}
        log.log(step + 1, last)
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (done - start) * cfg.batch_size / (time.time() - t0)
            print(f"step {done}: " + " ".join(f"{k} {v:.4f}" for k, v in last.items()) + f" ({rate:.0f} samples/s)")
        if fixed is not None and (done % cfg.sample_every == 0 or done == cfg.steps):
            model.eval()
            with torch.no_grad():
                gen = model(fixed[0], fixed[1])
            model.train()
            rows = np.concatenate([to_uint8(fixed[0]), to_uint8(gen), to_uint8(fixed[2])])
            save_png(run / "samples" / f"step_{done:06d}.png", grid(rows))  # proposal, generated, target
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_checkpoint(
                ckpt_path,
                dict(
                    model="cae",
                    model_args=asdict(args),
                    config=asdict(cfg),
                    step=done,
                    state=model.state_dict(),
                    opt_g=opt_g.state_dict(),
                    opt_c=opt_c.state_dict(),
                    opt_e=opt_e.state_dict(),
                    labels=labels,
                ),  # fmt: skip
            )
    log.close()
    return last


def load_model(path, device: str = "cpu", ck: dict | None = None) -> tuple[CAE, dict]:
    ck = ck if ck is not None else load_checkpoint(path, device)
    model = CAE(CAEArgs(**ck["model_args"])).to(device)
    model.load_state_dict(ck["state"])
    return model.eval(), ck
