"""The voice2face GAN (Wen et al., "Reconstructing faces from voices", NeurIPS 2019; "Face Reconstruction from
Voice using GANs"): a voice embedding network over 64-band log-mel frames, a generator from the (normalised)
embedding to a 64x64 face, and a discriminator that shares a face embedding network with an identity classifier.

Layer for layer as the original code's network.py, with the same module names, so its released
`voice_embedding.pth` loads into `VoiceEmbedNet` (`V2FArgs.voice_weights`) when the utterances carry the original
features (`extras.utterance_features: original`). The original trains the voice network beforehand, for speaker
recognition, and freezes it; here, without those weights, it is trained in the same run with its own speaker
classifier, and the GAN sees its embeddings detached (the generator does not shape the voice network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class V2FArgs:
    mel_bands: int = 64
    voice_channels: tuple[int, ...] = (256, 384, 576, 864)  # the original's widths
    embed_dim: int = 64  # voice embedding, the generator's input
    gen_channels: tuple[int, ...] = (1024, 512, 256, 128, 64)  # deconvolutions 1 → 4 → 8 → 16 → 32 → 64 px
    face_channels: tuple[int, ...] = (32, 64, 128, 256, 512)  # the face embedding network (D and C share it)
    n_classes: int = 2  # identities of the train split (the classifiers' outputs)
    voice_weights: str | None = None  # the original voice_embedding.pth: loaded and frozen


class VoiceEmbedNet(nn.Module):
    """(N, 64, T) log-mel → (N, embed_dim, 1, 1): strided Conv1d + BN + ReLU, then the mean over time."""

    def __init__(self, a: V2FArgs):
        super().__init__()
        layers, c_in = [], a.mel_bands
        for c in a.voice_channels:
            layers += [nn.Conv1d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm1d(c, affine=True), nn.ReLU(inplace=True)]
            c_in = c
        layers.append(nn.Conv1d(c_in, a.embed_dim, 3, 2, 1, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model(x)
        return x.mean(2).view(x.size(0), -1, 1, 1)


class Generator(nn.Module):
    """(N, embed_dim, 1, 1) → (N, 3, 64, 64), unbounded (the original applies no tanh; images are read in [-1, 1])."""

    def __init__(self, a: V2FArgs):
        super().__init__()
        ch = a.gen_channels
        layers = [nn.ConvTranspose2d(a.embed_dim, ch[0], 4, 1, 0, bias=True), nn.ReLU(inplace=True)]
        for c_in, c in zip(ch, ch[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c, 4, 2, 1, bias=True), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(ch[-1], 3, 1, 1, 0, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FaceEmbedNet(nn.Module):
    """(N, 3, 64, 64) → (N, embed_dim, 1, 1)."""

    def __init__(self, a: V2FArgs):
        super().__init__()
        ch = a.face_channels
        layers = [nn.Conv2d(3, ch[0], 1, 1, 0, bias=True), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c in zip(ch, ch[1:], strict=False):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1, bias=True), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(ch[-1], a.embed_dim, 4, 1, 0, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Classifier(nn.Module):
    """A linear layer over the flattened embedding (the discriminator is one with 1 output)."""

    def __init__(self, in_dim: int, n: int):
        super().__init__()
        self.model = nn.Linear(in_dim, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.view(x.size(0), -1))


class Voice2Face(nn.Module):
    def __init__(self, a: V2FArgs):
        super().__init__()
        self.args = a
        self.voice = VoiceEmbedNet(a)
        self.voice_cls = Classifier(a.embed_dim, a.n_classes)  # the voice network's speaker-recognition head
        self.generator = Generator(a)
        self.face = FaceEmbedNet(a)
        self.disc = Classifier(a.embed_dim, 1)
        self.cls = Classifier(a.embed_dim, a.n_classes)
        if a.voice_weights:
            self.voice.load_state_dict(torch.load(a.voice_weights, map_location="cpu", weights_only=True))
            self.voice.requires_grad_(False)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, T, 64) frames → the unit-norm voice embedding (N, embed_dim, 1, 1)."""
        return F.normalize(self.voice(mel.transpose(1, 2)))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, T, 64) → generated faces (N, 3, 64, 64)."""
        return self.generator(self.embed(mel))
