import numpy as np

from pipeline.features import N_FFT, log_mel, mel_filterbank, speech2face_stft, stft, tile_to


def sine(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_speech2face_stft_shape_and_compression():
    x = speech2face_stft(sine(1000, 6.0))
    assert x.shape == (598, 257, 2) and x.dtype == np.float32
    raw = stft(sine(1000, 6.0))
    np.testing.assert_allclose(x[..., 0], np.sign(raw.real) * np.abs(raw.real) ** 0.3, rtol=1e-5, atol=1e-6)


def test_a_known_sine_peaks_in_its_bin():
    spec = np.abs(stft(sine(1000, 1.0)))
    assert spec.shape == (1 + (16000 - 400) // 160, N_FFT // 2 + 1)
    assert set(spec.argmax(axis=1)) == {round(1000 * N_FFT / 16000)}  # bin 32


def test_short_clips_are_tiled_to_six_seconds():
    short = sine(440, 2.5)
    tiled = tile_to(short, 96000)
    assert len(tiled) == 96000 and np.array_equal(tiled[: len(short)], short)
    assert np.array_equal(tiled[len(short) : 2 * len(short)], short)
    assert speech2face_stft(short).shape == (598, 257, 2)


def test_log_mel_is_64_bands_normalised_per_utterance():
    mel = log_mel(sine(300, 3.0) + sine(3000, 3.0, 0.2))
    assert mel.shape == (1 + (48000 - 400) // 160, 64) and mel.dtype == np.float32
    fb = mel_filterbank()
    assert fb.shape == (64, 257) and fb[:, : round(20 * N_FFT / 16000)].sum() == 0  # nothing below 20 Hz
    noisy = log_mel((np.random.default_rng(0).normal(0, 3000, 48000)).astype(np.int16))
    np.testing.assert_allclose(noisy.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(noisy.std(0), 1, atol=1e-3)
