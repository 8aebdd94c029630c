import numpy as np
import pytest

from pipeline.media import decode_audio, decode_frames_on_grid, probe
from pipeline.reasons import ClipError
from tests.conftest import H, W, best_lag, read_wav


def test_probe_reports_streams(media):
    info = probe(media.moving)
    assert (info.width, info.height, info.fps) == (W, H, 25.0)
    assert info.has_audio and info.has_video and abs(info.duration - 8) < 0.1
    assert not probe(media.no_audio).has_audio


@pytest.mark.parametrize("name", ["truncated", "not_video"])
def test_corrupt_files_raise_corrupt_media(media, name):
    path = getattr(media, name)
    with pytest.raises(ClipError) as err:
        info = probe(path)
        decode_audio(path, 0, None)
        list(decode_frames_on_grid(path, info, 0, 0.5, 1.0, 8))
    assert err.value.reason == "corrupt_media"


def test_audio_is_16k_mono_int16_from_stereo_48k(media):
    audio = decode_audio(media.stereo48k, 0, None)
    assert audio.dtype == np.int16
    assert abs(len(audio) - 5 * 16000) < 16000 * 0.05
    assert np.abs(audio).max() > 1000  # speech, not silence


def test_audio_segment_matches_source_at_offset(media):
    src = read_wav(media.speech16k).astype(np.float64)
    seg = decode_audio(media.moving, 2.0, 1.0).astype(np.float64)
    assert len(seg) == 16000
    # where the decoded segment sits in the source speech: at 2.0 s (±20 ms)
    assert abs(best_lag(seg, src, 32000) - 32000) <= 320


def test_frames_on_grid_are_the_frames_shown_at_the_grid_times(media):
    info = probe(media.moving)
    frames = list(decode_frames_on_grid(media.moving, info, 1.0, 0.5, 1.0, 5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for f in frames:
        centre = 1.0 + 0.5 + f.index
        assert f.time <= centre < f.time + 1 / info.fps + 1e-6  # the frame on screen at the centre time
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
