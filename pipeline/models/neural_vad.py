"""Music and noise rejection with Silero VAD, a neural speech detector whose weights ship in its PyPI wheel.

webrtcvad (pipeline/speech.py) is an energy and spectrum model: it calls music, pink noise and crowd noise
"speech" (measured: 20 of 20 windows of a synthetic chord track and of pink noise pass it). Silero's network
was trained with music and noise as negatives and scores them near 0. Each window is scored on its own
(fresh state), as a batch of windows per call: about 1 ms a window on one CPU thread.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

CHUNK = 512  # samples per Silero VAD step at 16 kHz (32 ms)
SPEECH_PROB = 0.5  # a chunk is speech when the model's probability reaches this (Silero's own default)
BATCH = 64  # windows per forward pass (memory: BATCH x window x 4 bytes)

_local = threading.local()


def model_path() -> str:
    """The TorchScript model inside the installed silero-vad package, found without importing the package
    (its __init__ calls torch.set_num_threads(1) for the whole process)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (it is a dependency of voiceface: reinstall the package)")
    return os.path.join(spec.submodule_search_locations[0], "data", "silero_vad.jit")


def _model():
    """One model per thread: the scripted module keeps its recurrent state between calls."""
    if getattr(_local, "model", None) is None:
        import warnings

        import torch

        with (
            warnings.catch_warnings()
        ):  # torch.jit.load is deprecated in favour of torch.export; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            _local.model = torch.jit.load(model_path(), map_location="cpu").eval()
    return _local.model


def speech_shares(audio: np.ndarray, starts, window: int, prob: float = SPEECH_PROB) -> np.ndarray:
    """For each window audio[s : s + window], the share of its 32 ms chunks whose Silero VAD speech probability
    reaches `prob`."""
    import torch

    starts = list(starts)
    out = np.zeros(len(starts), dtype=np.float64)
    if not starts:
        return out
    model = _model()
    n = (window // CHUNK) * CHUNK
    for lo in range(0, len(starts), BATCH):
        batch = np.stack([audio[s : s + n] for s in starts[lo : lo + BATCH]]).astype(np.float32) / 32768.0
        with torch.inference_mode():
            model.reset_states()
            probs = model.audio_forward(torch.from_numpy(batch), 16000).numpy()
        out[lo : lo + len(batch)] = (probs >= prob).mean(axis=1)
    return out
