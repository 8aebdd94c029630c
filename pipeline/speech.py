"""Cut 16 kHz int16 audio into fixed windows and keep those webrtcvad calls speech."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np

from .config import SAMPLE_RATE, SpeechConfig


@dataclass(frozen=True)
class SpeechWindow:
    index: int  # k-th window of the clip
    start: int  # sample offset in the clip's audio
    speech_ratio: float  # share of VAD frames that are speech
    rms_dbfs: float


def window_starts(n_samples: int, window: int) -> list[int]:
    """Consecutive, non-overlapping windows; a tail shorter than a window is dropped."""
    return list(range(0, n_samples - window + 1, window))


def new_vad(cfg: SpeechConfig):
    """A webrtcvad instance. It keeps state between frames, so one per clip, never shared by threads."""
    import webrtcvad

    return webrtcvad.Vad(cfg.vad_aggressiveness)


def speech_ratio(audio: np.ndarray, cfg: SpeechConfig, vad=None) -> float:
    """Share of cfg.vad_frame_ms frames webrtcvad marks as speech."""
    frame = SAMPLE_RATE * cfg.vad_frame_ms // 1000
    n = len(audio) // frame
    if n == 0:
        return 0.0
    vad = vad or new_vad(cfg)
    data = audio[: n * frame].astype("<i2").tobytes()
    step = frame * 2
    voiced = sum(vad.is_speech(data[i * step : (i + 1) * step], SAMPLE_RATE) for i in range(n))
    return voiced / n


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if len(audio) else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768.0)


def cut_windows(audio: np.ndarray, cfg: SpeechConfig) -> list[SpeechWindow]:
    """Every window of the audio, with its VAD speech ratio (one VAD state across the clip, in order)."""
    windows = []
    vad = new_vad(cfg)
    for k, s in enumerate(window_starts(len(audio), cfg.window_samples)):
        chunk = audio[s : s + cfg.window_samples]
        windows.append(SpeechWindow(k, s, round(speech_ratio(chunk, cfg, vad), 4), round(rms_dbfs(chunk), 2)))
    return windows


def speech_windows(audio: np.ndarray, cfg: SpeechConfig) -> tuple[list[SpeechWindow], int]:
    """(windows with enough speech, number of windows cut). Both empty means the clip is too short."""
    windows = cut_windows(audio, cfg)
    return [w for w in windows if w.speech_ratio >= cfg.min_speech_ratio], len(windows)


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM WAV (webdataset has no wav encoder)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(audio.astype("<i2").tobytes())
    return buf.getvalue()


def voiced(audio: np.ndarray, cfg: SpeechConfig) -> np.ndarray:
    """The audio's VAD speech frames, concatenated (silence removed, as voice2face's preprocessing did)."""
    frame = SAMPLE_RATE * cfg.vad_frame_ms // 1000
    n = len(audio) // frame
    vad = new_vad(cfg)
    keep = [audio[i * frame : (i + 1) * frame] for i in range(n)]
    keep = [f for f in keep if vad.is_speech(f.astype("<i2").tobytes(), SAMPLE_RATE)]
    return np.concatenate(keep) if keep else audio[:0]
