"""Utterance-level voices for voice2face and the CAE: one mel over all of a clip's speech, next to the windows.

The papers train their voice network on whole utterances (3-8 s and more of VoxCeleb speech, random crops of
300-800 frames), not on 1 s windows. `utterance_of` computes a clip's utterance once: its webrtcvad speech frames
concatenated (silence removed, as the original preprocessing's `rm_sil` did), at most `extras.utterance_max_s`
seconds of it, as a (frames, 64) mel. `extras.utterance_features` picks the features: `original` reproduces the
original code's preprocessing exactly (`features.original_fbank`), so its pretrained voice network accepts them;
`voiceface` is the window mel's definition (`features.log_mel`). The extras stage puts it into each window sample:
every window sample of the clip carries the same `utt.npy` and a json `utterance` record, so no review or filter
decision about one window can lose the clip's utterance; a loader that wants one item per utterance takes the
first sample of each `clip_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SAMPLE_RATE, Config
from .features import WIN, log_mel, original_fbank
from .speech import voiced

UTTERANCE_FEATURES = ("original", "voiceface")


@dataclass(frozen=True)
class Utterance:
    mel: np.ndarray  # float32 (frames, 64)
    speech_samples: int  # samples of speech the mel covers
    features: str  # original | voiceface

    def to_meta(self) -> dict:
        return {
            "features": self.features,
            "frames": int(self.mel.shape[0]),
            "speech_samples": self.speech_samples,
            "speech_s": round(self.speech_samples / SAMPLE_RATE, 3),
        }


def utterance_of(clip_audio: np.ndarray, cfg: Config) -> Utterance | None:
    """The clip's utterance: its speech (the clip's own audio, before any tiling) as a mel; None when the clip has
    less than one 25 ms frame of speech."""
    speech = voiced(clip_audio, cfg.speech)[: int(cfg.extras.utterance_max_s * SAMPLE_RATE)]
    if len(speech) < WIN:
        return None
    kind = cfg.extras.utterance_features
    mel = original_fbank(speech) if kind == "original" else log_mel(speech)
    return Utterance(mel.astype(np.float32), len(speech), kind)
