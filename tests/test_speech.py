import numpy as np

from pipeline.config import SpeechConfig
from pipeline.speech import speech_ratio, speech_windows, wav_bytes, window_starts
from tests.conftest import read_wav


def test_window_starts_drop_the_short_tail():
    assert window_starts(16000 * 3 + 100, 16000) == [0, 16000, 32000]
    assert window_starts(16383, 16384) == []


def test_vad_keeps_speech_and_drops_silence(media):
    speech = read_wav(media.speech16k)
    cfg = SpeechConfig()
    assert speech_ratio(speech[16000:32000], cfg) > 0.5
    assert speech_ratio(np.zeros(16000, np.int16), cfg) == 0.0
    noise = (np.random.default_rng(0).normal(0, 30, 16000)).astype(np.int16)
    assert speech_ratio(noise, cfg) < 0.5
    kept, n = speech_windows(np.concatenate([np.zeros(32000, np.int16), speech[:32000]]), cfg)
    assert n == 4 and [w.index for w in kept] == [2, 3]


def test_window_length_is_a_setting(media):
    speech = read_wav(media.speech16k)
    kept, n = speech_windows(speech, SpeechConfig(window_samples=16384))
    assert n == len(speech) // 16384 and all(w.start % 16384 == 0 for w in kept)


def test_wav_bytes_are_16k_mono_pcm16():
    import io
    import wave

    data = wav_bytes(np.arange(16000, dtype=np.int16))
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 16000)
