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


def test_original_voice2face_features_follow_the_sphinx_front_end():
    from pipeline.features import WIN, original_fbank, original_logspec, sphinx_filterbank, tile_frames

    x = sine(1000, 2.0)
    spec = original_logspec(x)
    assert spec.shape == (int(len(x) / 160 + 1), 64)  # sig2logspec's frame count: past the end, cyclic padding
    fb = sphinx_filterbank()
    assert fb.shape == (513, 64)  # a 1024-point FFT
    np.testing.assert_allclose(fb.sum(0) * 16000 / 1024, 1.0, atol=0.2)  # area-normalised triangles (2 / width)
    assert fb[: round(20 * 1024 / 16000)].sum() == 0 and fb[round(7200 * 1024 / 16000) + 1 :].sum() == 0
    band = int(np.argmax(fb[round(1000 * 1024 / 16000)]))  # the band holding 1 kHz has the most energy
    assert set(spec[2:-3].argmax(1)) <= {band - 1, band, band + 1}
    # the first frame is pre-emphasised against 0, the next ones against the previous frame's last sample
    from pipeline.features import ORIG_ALPHA

    frame1 = x[160 : 160 + WIN].astype(float)
    emph = frame1 - ORIG_ALPHA * np.concatenate([[x[WIN - 1]], frame1[:-1]])
    power = np.abs(np.fft.rfft(emph * np.hamming(WIN), 1024)) ** 2
    np.testing.assert_allclose(spec[1], np.log(np.clip(power @ fb, 1e-5, None)), rtol=1e-9)
    norm = original_fbank(x + (np.random.default_rng(0).normal(0, 300, len(x))).astype(np.int16))
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(norm.std(0), 1, atol=1e-3)
    assert tile_frames(norm[:300], 1000).shape == (1000, 64) and tile_frames(norm, 10).shape == norm.shape
