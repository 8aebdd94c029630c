"""Audio features the seed systems train on, computed from 16 kHz mono int16 audio (numpy only).

- Speech2Face: a complex STFT (25 ms Hann window, 10 ms hop, 512-point FFT) with power-law compression
  sign(x)*|x|^0.3 on the real and imaginary parts; 6 s of audio gives shape (598, 257, 2).
- voice2face / CAE: 64-band log-mel (25 ms window, 10 ms hop, 20-7200 Hz) with per-utterance mean and
  variance normalisation; shape (frames, 64).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import SAMPLE_RATE

WIN = SAMPLE_RATE * 25 // 1000  # 400 samples
HOP = SAMPLE_RATE * 10 // 1000  # 160 samples
N_FFT = 512
S2F_SECONDS = 6.0
S2F_COMPRESSION = 0.3


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    """A periodic Hann window of WIN samples, centred in N_FFT (as librosa and torch.stft pad it)."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)
    pad = (N_FFT - WIN) // 2
    return np.pad(hann, (pad, N_FFT - WIN - pad)).astype(np.float64)


def _frames(audio: np.ndarray) -> np.ndarray:
    """(n_frames, N_FFT) windowed frames of float audio in [-1, 1], no centre padding."""
    x = np.asarray(audio, dtype=np.float64) / 32768.0 if audio.dtype == np.int16 else np.asarray(audio, np.float64)
    if len(x) < WIN:
        raise ValueError(f"{len(x)} samples is shorter than one {WIN}-sample window")
    n = 1 + (len(x) - WIN) // HOP
    pad = (N_FFT - WIN) // 2
    x = np.pad(x, (pad, N_FFT))  # frame i covers x[i*HOP - pad : i*HOP - pad + N_FFT]: the window's centre matches
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    return x[idx] * _window()[None, :]


def stft(audio: np.ndarray) -> np.ndarray:
    """Complex STFT, (frames, N_FFT // 2 + 1)."""
    return np.fft.rfft(_frames(audio), n=N_FFT, axis=1)


def tile_to(audio: np.ndarray, n: int) -> np.ndarray:
    """Repeat a short clip until it is n samples long (the Speech2Face reference tiles shorter clips)."""
    if len(audio) >= n:
        return audio[:n]
    reps = -(-n // max(len(audio), 1))
    return np.tile(audio, reps)[:n]


def speech2face_stft(audio: np.ndarray, seconds: float = S2F_SECONDS) -> np.ndarray:
    """Speech2Face's input: 6 s (tiled if shorter), STFT, power-law compressed re/im; float32 (598, 257, 2)."""
    spec = stft(tile_to(audio, int(round(seconds * SAMPLE_RATE))))
    parts = np.stack([spec.real, spec.imag], axis=-1)
    return (np.sign(parts) * np.abs(parts) ** S2F_COMPRESSION).astype(np.float32)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = 64, fmin: float = 20.0, fmax: float = 7200.0) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) triangular HTK-mel filters."""
    bins = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def log_mel(audio: np.ndarray, n_mels: int = 64, fmin: float = 20.0, fmax: float = 7200.0) -> np.ndarray:
    """64-band log-mel, normalised per utterance to zero mean and unit variance per band; float32 (frames, 64)."""
    power = np.abs(stft(audio)) ** 2
    mel = np.log(power @ mel_filterbank(n_mels, fmin, fmax).T + 1e-6)
    mel = (mel - mel.mean(axis=0, keepdims=True)) / (mel.std(axis=0, keepdims=True) + 1e-5)
    return mel.astype(np.float32)


# --- voice2face's own features (the original code's preprocessing, for its pretrained voice network) ---------------
# Its `MFCC(nfilt=64, lowerf=20, upperf=7200, samprate=16000, nfft=1024, wlen=0.025).sig2logspec` (Sphinx's MFCC
# front end): 400-sample Hamming frames every 160 samples, each pre-emphasised (0.97) against the last sample of
# the previous frame, a 1024-point power spectrum, Sphinx's triangular mel filters (area-normalised, edges rounded
# to FFT bins), log clipped at 1e-5; then per-utterance mean and variance normalisation with float32 epsilon.
ORIG_NFFT = 1024
ORIG_ALPHA = 0.97


@lru_cache(maxsize=4)
def sphinx_filterbank(n_mels: int = 64, fmin: float = 20.0, fmax: float = 7200.0, nfft: int = ORIG_NFFT):
    """(nfft // 2 + 1, n_mels) Sphinx mel filters: triangles on FFT bins whose edges are rounded from the mel
    scale, each of height 2 / (width in Hz), as the original mfcc.py builds them."""
    filters = np.zeros((nfft // 2 + 1, n_mels))
    dfreq = SAMPLE_RATE / nfft
    melmin, melmax = _hz_to_mel(fmin), _hz_to_mel(fmax)
    edges = _mel_to_hz(melmin + (melmax - melmin) / (n_mels + 1) * np.arange(n_mels + 2))
    for j in range(n_mels):
        left, centre, right = (int(round(edges[j + k] / dfreq)) for k in range(3))
        height = 2.0 / ((right - left) * dfreq)
        for f in range(left + 1, centre):
            filters[f, j] = (f - left) * height / (centre - left)
        filters[centre, j] = height
        for f in range(centre + 1, right):
            filters[f, j] = (f - right) * height / (centre - right)
    return filters


def _sphinx_frames(audio: np.ndarray) -> np.ndarray:
    """(frames, WIN) raw frames as sig2logspec cuts them: int(n / HOP + 1) frames at round(i * HOP); a frame
    running past the end is the remaining samples repeated cyclically (numpy.resize), an empty one zeros."""
    x = np.asarray(audio, dtype=np.float64)
    n = int(len(x) / HOP + 1)
    starts = np.arange(n) * HOP
    full = starts + WIN <= len(x)
    frames = np.zeros((n, WIN))
    nf = int(full.sum())
    if nf:
        frames[:nf] = x[np.arange(WIN)[None, :] + starts[:nf, None]]
    for i in range(nf, n):
        rest = x[starts[i] :]
        if len(rest):
            frames[i] = np.resize(rest, WIN)
    return frames


def original_logspec(audio: np.ndarray) -> np.ndarray:
    """voice2face's log mel spectrogram of int16-valued audio, before normalisation; float64 (frames, 64)."""
    frames = _sphinx_frames(audio)
    prior = np.concatenate([[0.0], frames[:-1, -1]])  # the previous frame's last raw sample (0 for the first)
    emphasised = frames - ORIG_ALPHA * np.concatenate([prior[:, None], frames[:, :-1]], axis=1)
    spec = np.fft.rfft(emphasised * np.hamming(WIN)[None, :], ORIG_NFFT, axis=1)
    power = spec.real**2 + spec.imag**2
    return np.log(np.clip(power @ sphinx_filterbank(), 1e-5, np.inf))


def original_fbank(audio: np.ndarray) -> np.ndarray:
    """voice2face's network input for one utterance: `original_logspec`, then (as its get_fbank) float32, mean
    and variance normalised per band; float32 (frames, 64). No tiling: the utterance's own length."""
    fbank = original_logspec(audio).astype(np.float32)
    fbank = fbank - fbank.mean(axis=0)
    return fbank / (fbank.std(axis=0) + np.finfo(np.float32).eps)


def tile_frames(fbank: np.ndarray, n: int) -> np.ndarray:
    """Repeat an utterance's frames until it has at least n (voice2face's get_fbank tiles to 1000 frames)."""
    if len(fbank) >= n:
        return fbank
    return np.tile(fbank, (-(-n // len(fbank)), 1))[:n]
