"""The Controlled AutoEncoder (CAE) for voice-to-face: an autoencoder of faces whose bottleneck is controlled by a
voice. Given a proposal face of speaker A and a voice of speaker B it generates B's face: the face encoder gives a
spatial code of the proposal (pose, lighting, framing), the voice embedding modulates that code channel by
channel (scale and shift, FiLM), and the decoder renders the result. Trained on (face of A, voice of B, face of B)
triplets: reconstruct B's face, be recognised as B by a face classifier trained on real faces, and, with A = B,
reproduce the input (the autoencoder's own loss). The voice network is voice2face's (`VoiceEmbedNet`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.voice2face.model import Classifier, V2FArgs, VoiceEmbedNet


@dataclass
class CAEArgs:
    voice_channels: tuple[int, ...] = (256, 384, 576, 864)
    embed_dim: int = 64
    enc_channels: tuple[int, ...] = (64, 128, 256, 512)  # 64 → 32 → 16 → 8 → 4 px
    cls_channels: tuple[int, ...] = (32, 64, 128, 256)  # the face identity classifier
    n_classes: int = 2


def _down(c_in: int, c: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]


class CAE(nn.Module):
    def __init__(self, a: CAEArgs):
        super().__init__()
        self.args = a
        self.voice = VoiceEmbedNet(V2FArgs(voice_channels=a.voice_channels, embed_dim=a.embed_dim))
        self.voice_cls = Classifier(a.embed_dim, a.n_classes)
        enc, c_in = [], 3
        for c in a.enc_channels:
            enc += _down(c_in, c)
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self.film = nn.Linear(a.embed_dim, 2 * c_in)  # the voice's control: a scale and a shift per channel
        dec, ch = [], list(a.enc_channels[::-1])
        for c_in, c in zip(ch, ch[1:], strict=False):
            dec += [nn.ConvTranspose2d(c_in, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        dec += [nn.ConvTranspose2d(ch[-1], 3, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)
        cls, c_in = [], 3
        for c in a.cls_channels:
            cls += _down(c_in, c)
            c_in = c
        self.face_cls = nn.Sequential(*cls, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, a.n_classes))

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, T, 64) → unit voice embedding (N, embed_dim)."""
        return F.normalize(self.voice(mel.transpose(1, 2)).flatten(1))

    def forward(self, proposal: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """A proposal face (N, 3, 64, 64) in [-1, 1] and a voice (N, T, 64) → the voice's face (N, 3, 64, 64)."""
        return self.generate(proposal, self.embed(mel))

    def generate(self, proposal: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.encoder(proposal)
        scale, shift = self.film(emb).chunk(2, dim=1)
        return self.decoder(z * (1 + scale[..., None, None]) + shift[..., None, None])
