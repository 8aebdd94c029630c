"""Train the voice2face GAN on the train split, as the original gan_train.py: per step one update of the face
embedding network, discriminator and classifier (real vs generated, identity of real faces), then one of the
generator (fool D, be classified as the voice's speaker). Adam, lr 2e-4, betas (0.5, 0.999); voices are random
crops of 300-800 frames (one length per batch) of each clip's utterance (`utt.npy`), faces 64x64 flipped at random.

    voiceface train --model voice2face --shards out/demo --run out/runs/v2f [--config tiny] [--steps N]

Needs shards built with `--preset voice2face` or `cae` (utterances and 64 px faces). Writes RUN/metrics.csv,
RUN/samples/step_XXXXXX.png (real faces over faces generated from their voices) and RUN/checkpoint.pt.
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
from trainer.voice2face.model import V2FArgs, Voice2Face


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50_000  # the original's iterations
    batch_size: int = 128
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    nframe_range: tuple[int, int] = (300, 800)  # voice crop length, drawn once per batch (the original's collate)
    noise: float = 0.05  # Gaussian noise added to the unit voice embedding before the generator
    buffer: int = 2000
    epoch_batches: int = 1000
    workers: int = 4
    sample_every: int = 1000
    ckpt_every: int = 1000
    seed: int = 1337
    device: str = "auto"
    threads: int = 0
    model: V2FArgs = field(default_factory=V2FArgs)


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
        model=V2FArgs(
            voice_channels=(32, 32, 64, 64),
            embed_dim=32,
            gen_channels=(64, 32, 32, 16, 16),
            face_channels=(8, 16, 16, 32, 32),
        ),  # fmt: skip
    ),
}

LOSSES = ["d_real", "d_fake", "c_real", "g_d_fake", "g_c_fake", "e_id"]


def config_from_dict(d: dict) -> TrainConfig:
    return dataclass_from_dict(TrainConfig, d)


def voice_batch(utt: torch.Tensor, nframe_range: tuple[int, int], rng: random.Random) -> torch.Tensor:
    """One crop length for the whole batch, at one offset (as the original's collate_fn)."""
    lo, hi = nframe_range
    n = rng.randint(lo, hi)
    start = rng.randint(0, utt.shape[1] - n)
    return utt[:, start : start + n]


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
        labels, args, start = ck["labels"], V2FArgs(**ck["model_args"]), ck["step"]
    else:
        labels, start = split_label_map(shards, "train"), 0
        args = dataclasses.replace(cfg.model, n_classes=max(len(labels), 1))
    torch.manual_seed(cfg.seed + start)
    rng = random.Random(cfg.seed + start)
    model = Voice2Face(args).to(device)
    adam = dict(lr=cfg.lr, betas=cfg.betas)
    opt_e = torch.optim.Adam([*model.voice.parameters(), *model.voice_cls.parameters()], **adam)
    opt_g = torch.optim.Adam(model.generator.parameters(), **adam)
    opt_d = torch.optim.Adam([*model.face.parameters(), *model.disc.parameters(), *model.cls.parameters()], **adam)
    if ck is not None:
        model.load_state_dict(ck["state"])
        for opt, name in ((opt_e, "opt_e"), (opt_g, "opt_g"), (opt_d, "opt_d")):
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
        face = torch.where(torch.rand(len(face), 1, 1, 1, device=device) > 0.5, face.flip(3), face)
        y = b["label"].to(device)
        if fixed is None:
            fixed = (voice[:8], face[:8])
        ones, zeros = torch.ones(len(y), 1, device=device), torch.zeros(len(y), 1, device=device)

        with autocast(device):
            emb = model.voice(voice.transpose(1, 2))  # the voice network and its speaker classifier
            e_id = F.cross_entropy(model.voice_cls(emb).float(), y, ignore_index=-1)
            e = F.normalize(F.normalize(emb.detach()) + cfg.noise * torch.randn_like(emb))
            fake = model.generator(e)
            f_real = model.face(face)
            d_real = F.binary_cross_entropy_with_logits(model.disc(f_real).float(), ones)
            d_fake = F.binary_cross_entropy_with_logits(model.disc(model.face(fake.detach())).float(), zeros)
            c_real = F.cross_entropy(model.cls(f_real).float(), y, ignore_index=-1)
        if e_id.requires_grad:
            opt_e.zero_grad(set_to_none=True)
            e_id.backward()
            opt_e.step()
        opt_d.zero_grad(set_to_none=True)
        (d_real + d_fake + c_real).backward()
        opt_d.step()

        with autocast(device):
            f_fake = model.face(fake)
            g_d_fake = F.binary_cross_entropy_with_logits(model.disc(f_fake).float(), ones)
            g_c_fake = F.cross_entropy(model.cls(f_fake).float(), y, ignore_index=-1)
        opt_g.zero_grad(set_to_none=True)
        (g_d_fake + g_c_fake).backward()
        opt_g.step()

        last = dict(d_real=d_real, d_fake=d_fake, c_real=c_real, g_d_fake=g_d_fake, g_c_fake=g_c_fake, e_id=e_id)
        last = {k: float(v.detach()) for k, v in last.items()}
        log.log(step + 1, last)
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (done - start) * cfg.batch_size / (time.time() - t0)
            print(f"step {done}: " + " ".join(f"{k} {v:.4f}" for k, v in last.items()) + f" ({rate:.0f} samples/s)")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            model.eval()
            with torch.no_grad():
                gen = model(fixed[0])
            model.train()
            save_png(
                run / "samples" / f"step_{done:06d}.png", grid(np.concatenate([to_uint8(fixed[1]), to_uint8(gen)]))
            )
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_checkpoint(
                ckpt_path,
                dict(
                    model="voice2face",
                    model_args=asdict(args),
                    config=asdict(cfg),
                    step=done,
                    state=model.state_dict(),
                    opt_e=opt_e.state_dict(),
                    opt_g=opt_g.state_dict(),
                    opt_d=opt_d.state_dict(),
                    labels=labels,
                ),  # fmt: skip
            )
    log.close()
    return last


def load_model(path, device: str = "cpu", ck: dict | None = None) -> tuple[Voice2Face, dict]:
    ck = ck if ck is not None else load_checkpoint(path, device)
    model = Voice2Face(V2FArgs(**{**ck["model_args"], "voice_weights": None})).to(device)
    model.load_state_dict(ck["state"])
    return model.eval(), ck
