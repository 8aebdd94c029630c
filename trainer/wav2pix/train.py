"""Train Wav2Pix on the train split: LSGAN + the auxiliary identity loss, Adam (lr_G 1e-4, lr_D 4e-4, beta1 0.5).

    python -m trainer.wav2pix.train --shards out/demo --run out/runs/wav2pix [--config tiny] [--steps N]

Writes RUN/metrics.csv (a row a step), RUN/samples/step_XXXXXX.png (real faces over generated ones) and
RUN/checkpoint.pt; a run with a checkpoint resumes from it (model args from the checkpoint, as in nanoGPT).
"""

from __future__ import annotations

import dataclasses
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
from trainer.wav2pix.model import Wav2Pix, Wav2PixArgs


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000  # optimiser steps (one D and one G update each)
    batch_size: int = 64
    lr_g: float = 1e-4  # generator and speech encoder (the paper's values)
    lr_d: float = 4e-4  # discriminator (two time-scale update rule)
    betas: tuple[float, float] = (0.5, 0.999)
    lambda_id: float = 1.0  # weight of the auxiliary identity cross-entropy
    mismatch: bool = True  # a real face with another speaker's voice also counts as fake (matching-aware D)
    buffer: int = 2000  # sample shuffle buffer
    epoch_batches: int = 1000  # batches per with_epoch "epoch" of resampled shards
    workers: int = 4  # DataLoader workers
    sample_every: int = 500  # steps between sample grids
    ckpt_every: int = 1000  # steps between checkpoints (and at the end)
    seed: int = 1337
    device: str = "auto"  # cuda when there is one; bf16 autocast there
    threads: int = 0  # torch CPU threads (0: torch's default)
    model: Wav2PixArgs = field(default_factory=Wav2PixArgs)


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
        model=Wav2PixArgs(enc_channels=(8, 16, 16, 32, 32, 64), embed_dim=128, ngf=16, ndf=16),
    ),
}

LOSSES = ["d_loss", "d_adv", "d_id", "g_loss", "g_adv", "g_id"]


def config_from_dict(d: dict) -> TrainConfig:
    """The TrainConfig a checkpoint stored (as a dict)."""
    return dataclass_from_dict(TrainConfig, d)


def _lsgan(score: torch.Tensor, target: float) -> torch.Tensor:
    return 0.5 * F.mse_loss(score.float(), torch.full_like(score, target, dtype=torch.float32))


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
        labels, args, start = ck["labels"], Wav2PixArgs(**ck["model_args"]), ck["step"]
    else:
        labels, start = split_label_map(shards, "train"), 0
        args = dataclasses.replace(cfg.model, n_classes=max(len(labels), 1))
    torch.manual_seed(cfg.seed + start)
    model = Wav2Pix(args).to(device)
    enc, gen, disc = model.encoder, model.generator, model.discriminator
    opt_g = torch.optim.Adam([*enc.parameters(), *gen.parameters()], lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    if ck is not None:
        model.load_state_dict(ck["state"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        print(f"resuming {ckpt_path} at step {start}")

    # the window or one of its 5 augmentation chunks (aug.npy), scaled as the original code does
    decoder = Decoder(labels, ("w2p_wav", "face", "label"), face_size=args.image_size, wav_len=args.wav_len)
    seed = cfg.seed + start  # a resumed run draws new samples rather than replaying the first ones
    data = batches(
        loader(
            train_dataset(shards, decoder, cfg.batch_size, cfg.epoch_batches, cfg.buffer, seed),
            cfg.workers,
            pin_memory=device.startswith("cuda"),
        )
    )
    log = CsvLog(run / "metrics.csv", LOSSES, steps=(start, cfg.steps))
    fixed, t0, last = None, time.time(), {}

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            dict(
                model="wav2pix",
                model_args=asdict(args),
                config=asdict(cfg),
                step=step,
                state=model.state_dict(),
                opt_g=opt_g.state_dict(),
                opt_d=opt_d.state_dict(),
                labels=labels,
            ),
        )

    model.train()
    for step in range(start, cfg.steps):
        b = next(data)
        wav = b["wav"].to(device, non_blocking=True)
        real = b["face"].to(device, non_blocking=True).float() / 127.5 - 1
        y = b["label"].to(device)
        if fixed is None:
            fixed = (wav[:8], real[:8])

        with autocast(device):
            emb = enc(wav)
            fake = gen(emb)
            # discriminator: real pairs → 1, generated → 0, (mismatched voice → 0), identity of real and fake
            e = emb.detach()
            s_real, c_real = disc(real, e)
            s_fake, c_fake = disc(fake.detach(), e)
        d_adv = _lsgan(s_real, 1.0)
        if cfg.mismatch and len(y) > 1:
            wrong = y.roll(1) != y  # only pairs whose speakers really differ are negatives
            with autocast(device):
                s_mis, _ = disc(real, e.roll(1, 0))
            mis = _lsgan(s_mis[wrong], 0.0) if wrong.any() else s_mis.sum() * 0
            d_adv = d_adv + 0.5 * (_lsgan(s_fake, 0.0) + mis)
        else:
            d_adv = d_adv + _lsgan(s_fake, 0.0)
        d_id = F.cross_entropy(c_real.float(), y, ignore_index=-1)
        d_loss = d_adv + cfg.lambda_id * (d_id + F.cross_entropy(c_fake.float(), y, ignore_index=-1))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # generator and speech encoder: fool D and look like the speaker
        with autocast(device):
            s, c = disc(fake, emb)
        g_adv = _lsgan(s, 1.0)
        g_id = F.cross_entropy(c.float(), y, ignore_index=-1)
        g_loss = g_adv + cfg.lambda_id * g_id
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

        last = dict(d_loss=d_loss, d_adv=d_adv, d_id=d_id, g_loss=g_loss, g_adv=g_adv, g_id=g_id)
        last = {k: float(v.detach()) for k, v in last.items()}
        log.log(step + 1, last)
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            rate = (done - start) * cfg.batch_size / (time.time() - t0)
            print(f"step {done}: " + " ".join(f"{k} {v:.4f}" for k, v in last.items()) + f" ({rate:.0f} samples/s)")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            model.eval()
            with torch.no_grad():
                gen_faces = model(fixed[0])
            model.train()
            save_png(
                run / "samples" / f"step_{done:06d}.png",
                grid(np.concatenate([to_uint8(fixed[1]), to_uint8(gen_faces)])),
            )
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            checkpoint(done)
    log.close()
    return last


def load_model(path, device: str = "cpu") -> tuple[Wav2Pix, dict]:
    """A trained Wav2Pix (eval mode) and its checkpoint dict."""
    ck = load_checkpoint(path, device)
    model = Wav2Pix(Wav2PixArgs(**ck["model_args"])).to(device)
    model.load_state_dict(ck["state"])
    return model.eval(), ck


if __name__ == "__main__":
    from trainer.cli import main

    raise SystemExit(main(["train", "--model", "wav2pix", *__import__("sys").argv[1:]]))
