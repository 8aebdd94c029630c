"""Wav2Pix (Duarte et al., ICASSP 2019): a SEGAN-style speech encoder, a DCGAN generator conditioned on the
128-D speech embedding, and a spectral-norm discriminator that joins the embedding at 4x4 and has an auxiliary
identity classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class Wav2PixArgs:
    wav_len: int = 16384  # raw samples in (SEGAN's window); 16000-sample windows are zero-padded at the end
    enc_channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # kernel 15, stride 4 each: 16384 -> 4
    embed_dim: int = 128  # the speech embedding
    noise_dim: int = 0  # optional z next to the embedding (Wav2Pix conditions on speech only)
    image_size: int = 64  # 64 or 128
    ngf: int = 64  # generator width (channels at the last upsampling)
    ndf: int = 64  # discriminator width (channels after the first conv)
    n_classes: int = 2  # identities of the auxiliary classifier


class SpeechEncoder(nn.Module):
    """SEGAN-style: Conv1d (kernel 15, stride 4) + PReLU stack over raw audio, then FC layers to the embedding."""

    def __init__(self, a: Wav2PixArgs):
        super().__init__()
        layers, c_in, n = [], 1, a.wav_len
        for c in a.enc_channels:
            layers += [nn.Conv1d(c_in, c, 15, stride=4, padding=7), nn.BatchNorm1d(c), nn.PReLU(c)]
            c_in, n = c, (n - 1) // 4 + 1
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(c_in * n, 4 * a.embed_dim), nn.PReLU(), nn.Linear(4 * a.embed_dim, a.embed_dim), nn.Tanh()
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(wav.unsqueeze(1)).flatten(1))


def _levels(image_size: int) -> int:
    if image_size not in (64, 128):
        raise ValueError(f"image_size must be 64 or 128, got {image_size}")
    return 4 if image_size == 64 else 5  # 4x4 doubled that many times


class Generator(nn.Module):
    """Embedding (+ z) → 4x4 → transposed convs doubling to 64 or 128 px, tanh."""

    def __init__(self, a: Wav2PixArgs):
        super().__init__()
        n = _levels(a.image_size)
        chans = [a.ngf * 2 ** min(n - 1 - i, 3) for i in range(n)]  # e.g. 512, 256, 128, 64
        self.fc = nn.Sequential(nn.Linear(a.embed_dim + a.noise_dim, chans[0] * 16), nn.BatchNorm1d(chans[0] * 16))
        self.c0, layers = chans[0], [nn.ReLU(True)]
        for i in range(n - 1):
            layers += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i + 1])]
            layers += [nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.noise_dim = a.noise_dim

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if self.noise_dim:
            emb = torch.cat([emb, torch.randn(len(emb), self.noise_dim, device=emb.device, dtype=emb.dtype)], 1)
        return self.net(self.fc(emb).view(len(emb), self.c0, 4, 4))


class Discriminator(nn.Module):
    """Spectral-norm convs down to 4x4; the score sees those features with the embedding replicated over 4x4;
    the identity head sees the image features alone."""

    def __init__(self, a: Wav2PixArgs):
        super().__init__()
        n = _levels(a.image_size)
        chans = [a.ndf * 2 ** min(i, 3) for i in range(n)]  # e.g. 64, 128, 256, 512
        layers, c_in = [], 3
        for c in chans:
            layers += [spectral_norm(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.joint = nn.Sequential(
            spectral_norm(nn.Conv2d(c_in + a.embed_dim, c_in, 1)),
            nn.LeakyReLU(0.2, True),
            spectral_norm(nn.Conv2d(c_in, 1, 4)),
        )
        self.classify = nn.Linear(c_in * 16, a.n_classes)

    def forward(self, image: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (N,), identity logits (N, n_classes))."""
        h = self.features(image)
        e = emb.view(len(emb), -1, 1, 1).expand(-1, -1, 4, 4)
        return self.joint(torch.cat([h, e], 1)).flatten(), self.classify(h.flatten(1))


class Wav2Pix(nn.Module):
    """The three networks; `forward` is generation: raw audio (N, wav_len) in [-1, 1] → faces (N, 3, S, S)."""

    def __init__(self, a: Wav2PixArgs):
        super().__init__()
        self.args = a
        self.encoder, self.generator, self.discriminator = SpeechEncoder(a), Generator(a), Discriminator(a)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(wav))
