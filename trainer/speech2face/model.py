"""The Speech2Face voice encoder (Oh et al., CVPR 2019), slimmed: conv blocks over the compressed complex STFT
(598 x 257 x 2, real and imaginary parts as channels) or a log-mel (T x 64), pooled over time, then FC layers to
the face feature (VGG-Face fc7, 4096-D, or the dlib embedding, 128-D)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VoiceEncoderArgs:
    feature: str = "stft"  # stft: (598, 257, 2); mel: (T, 64)
    channels: tuple[int, ...] = (64, 64, 128, 128, 128, 256, 512)  # conv blocks; the paper's widths (up to 512)
    hidden: int = 4096  # FC width before the output
    out_dim: int = 4096  # 4096 (vggface.npy) or 128 (dlib.npy)


class VoiceEncoder(nn.Module):
    """Audio feature → face feature. Conv (3x3) + BN + ReLU blocks, each halving time and frequency; the
    frequency axis is flattened into channels at the end and time is averaged (any clip length works)."""

    def __init__(self, a: VoiceEncoderArgs):
        super().__init__()
        self.args = a
        c_in, freq = (2, 257) if a.feature == "stft" else (1, 64)
        layers = []
        for c in a.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
            c_in, freq = c, (freq - 1) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_in * freq, a.hidden), nn.ReLU(True), nn.Linear(a.hidden, a.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, F, 2) STFT or (N, T, F) mel → (N, out_dim)."""
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # channels first: (N, C, T, F)
        h = self.conv(x)
        h = h.permute(0, 2, 1, 3).flatten(2).mean(1)  # (N, T', C*F') averaged over time
        return self.fc(h)


def normalized_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The regression loss: squared distance between the L2-normalised prediction and target (mean over batch)."""
    p = nn.functional.normalize(pred.float(), dim=1)
    t = nn.functional.normalize(target.float(), dim=1)
    return (p - t).pow(2).sum(1).mean()
