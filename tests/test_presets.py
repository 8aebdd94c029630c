"""Each seed system's preset against its paper's numbers: window lengths, crops, arrays, labels and the CAE index."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import _parser
from pipeline.build import finish_build, plan_build
from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config, load_config
from pipeline.features import speech2face_stft
from pipeline.records import Clip
from pipeline.review.queue import prepare_review
from pipeline.stages.extras import augment_starts
from pipeline.tars import read_samples
from tests.conftest import read_wav


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def size(jpg: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(jpg)).size


def run(path, tmp_path, preset, **sections):
    ctx = BuildContext(out=tmp_path / "out", cfg=Config.from_dict(sections, preset))
    status = run_clip(Clip("c1", str(path), "person", 1), ctx)
    return status, list(read_samples(ctx.clip_tar("c1"))) if status.status == "ok" else []


def test_presets_are_a_base_the_yaml_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: wav2pix\nextras:\n  augment: 2\n")
    cfg = load_config(p)
    assert (cfg.preset, cfg.speech.window_samples, cfg.extras.face_sizes, cfg.extras.augment) == (
        "wav2pix", 16384, (64, 128), 2,
    )  # fmt: skip
    assert load_config(p, "cae").preset == "cae" and load_config(p, "cae").speech.window_samples == 16000
    hashes = {Config.from_dict({}, name).clip_hash() for name in ("wav2pix", "speech2face", "voice2face", None)}
    assert len(hashes) == 4
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid: cae, speech2face, voice2face, wav2pix"):
        Config.from_dict({}, "nope")
    assert _parser().parse_args(["build", "m.csv", "--out", "o", "--preset", "speech2face"]).preset == "speech2face"
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo", "--preset", "nope"])


def test_wav2pix_windows_faces_and_augmentation(media, tmp_path):
    s, samples = run(media.moving, tmp_path, "wav2pix")
    assert s.status == "ok" and samples
    for sample in samples:
        meta = json.loads(sample["json"])
        wav = read_wav(sample["wav"])
        assert len(wav) == 16384 == meta["window_samples"]
        assert size(sample["jpg"]) == (224, 224)
        assert size(sample["face64.jpg"]) == (64, 64) and size(sample["face128.jpg"]) == (128, 128)
        aug = npy(sample["aug.npy"])
        assert aug.shape == (5, 16384) and aug.dtype == np.int16
        # drawn from the 4 s around the face frame
        for start in meta["aug_starts"]:
            assert meta["frame_time"] - 2 - 1e-6 <= start <= meta["frame_time"] + 2 - 16384 / 16000 + 1e-6
    # the clip's own audio: a window drawn at the window's own start is the window
    cfg = Config.from_dict({}, "wav2pix")
    a = augment_starts("c1-00003", 60000, 128000, cfg)
    assert np.array_equal(a, augment_starts("c1-00003", 60000, 128000, cfg))  # deterministic
    other = Config.from_dict({"extras": {"seed": 1}}, "wav2pix")
    assert not np.array_equal(a, augment_starts("c1-00003", 60000, 128000, other))
    assert not np.array_equal(a, augment_starts("c1-00004", 60000, 128000, cfg))
    assert ((a >= 60000 - 32000) & (a <= 60000 + 32000 - 16384)).all()


def test_speech2face_six_second_segments_and_stft(media, tmp_path):
    s, samples = run(media.moving, tmp_path, "speech2face")
    assert s.status == "ok" and s.windows_total == 1 and len(samples) == 1
    sample, meta = samples[0], json.loads(samples[0]["json"])
    wav = read_wav(sample["wav"])
    assert len(wav) == 96000 and meta["window_end"] - meta["window_start"] == pytest.approx(6.0)
    stft = npy(sample["stft.npy"])
    assert stft.shape == (598, 257, 2) and stft.dtype == np.float32
    np.testing.assert_allclose(stft, speech2face_stft(wav), atol=1e-6)
    assert size(sample["jpg"]) == (224, 224)
    # the face is the segment's first frame with a good face: here its very first frame
    assert 0 <= meta["frame_time"] - meta["window_start"] <= 0.04 + 1e-6


def test_speech2face_tiles_a_short_clip(media, tmp_path):
    s, samples = run(media.stereo48k, tmp_path, "speech2face")  # 5 s
    assert s.status == "ok" and len(samples) == 1
    meta = json.loads(samples[0]["json"])
    wav = read_wav(samples[0]["wav"])
    n = meta["tiled_from"]
    assert len(wav) == 96000 and 4.5 * 16000 < n < 96000
    assert np.array_equal(wav[n : 2 * n], wav[: 96000 - n])
    assert meta["window_end"] == pytest.approx(meta["window_start"] + n / 16000)
    # without the preset the clip is too short for a 6 s window
    s2, _ = run(media.stereo48k, tmp_path / "plain", None, speech={"window_samples": 96000})
    assert (s2.status, s2.reason) == ("rejected", "too_short")


def test_voice2face_mel_over_the_speech_frames_and_64px_face(media, tmp_path):
    s, samples = run(media.moving, tmp_path, "voice2face")
    assert s.status == "ok" and samples
    lengths = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        mel = npy(sample["mel.npy"])
        n = meta["mel_samples"]
        assert 400 <= n <= 16000 and n % 480 == 0  # whole 30 ms VAD frames of speech
        assert mel.shape == (1 + (n - 400) // 160, 64) and mel.dtype == np.float32
        np.testing.assert_allclose(mel.mean(0), 0, atol=1e-4)
        assert size(sample["face64.jpg"]) == (64, 64)
        lengths.add(n)
    assert len(lengths) > 1  # variable-length speech


def build(manifest: Path, out: Path, preset: str) -> dict:
    """A build without Prefect: plan, run each clip, finish."""
    plan = plan_build(manifest, out, load_config(None, preset))
    for clip in plan.todo:
        run_clip(clip, plan.ctx)
    return finish_build(plan, prepare_review)


def shard_samples(out: Path) -> dict[tuple[str, str], dict]:
    found = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext == "json":
                    found[(tar_path.name, key)] = json.loads(tar.extractfile(m).read())
    return found


@pytest.mark.slow
def test_labels_are_stable_and_the_cae_index_finds_every_sample(media, tmp_path):
    manifest = tmp_path / "m.csv"
    rows = f"source,id,identity,split\n{media.moving},m1,mia,train\n{media.stereo48k},s1,sam,val\n"
    manifest.write_text(rows)
    out = tmp_path / "out"
    build(manifest, out, "cae")
    first = json.loads((out / "labels.json").read_text())
    assert first == {"mia": 0, "sam": 1}
    # a second build adds an identity that sorts first: the old labels do not move
    manifest.write_text(rows + f"{media.two_faces},t1,abe,train\n")
    build(manifest, out, "cae")
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {"mia": 0, "sam": 1, "abe": 2}
    samples = shard_samples(out)
    assert samples and all(m["identity_label"] == labels[m["identity"]] for m in samples.values())
    index = json.loads((out / "cae_index.json").read_text())
    listed = {
        (shard, key): (split, identity, entry["label"])
        for split, ids in index["splits"].items()
        for identity, entry in ids.items()
        for shard, key in entry["samples"]
    }
    assert set(listed) == set(samples)
    for where, (split, identity, label) in listed.items():
        m = samples[where]
        assert (m["split"], m["identity"], m["identity_label"]) == (split, identity, label)
    assert set(index["splits"]["train"]) == {"mia", "abe"} and set(index["splits"]["val"]) == {"sam"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["leakage"]["pairs"] == 0 and summary["leakage"]["identities_checked"] == {"train": 2, "val": 1}
    # labels within each split run 0..k-1 (in the order of the global labels), and a 1-identity split is warned of
    by_split = json.loads((out / "split_labels.json").read_text())
    assert by_split == {"train": {"mia": 0, "abe": 1}, "val": {"sam": 0}}
    assert all(m["split_label"] == by_split[m["split"]][m["identity"]] for m in samples.values())
    assert [w.split(":")[0] for w in summary["warnings"]] == ["split 'val' has 1 identities"]


def test_utterance_mel_covers_the_clips_speech_with_the_original_features(media, tmp_path):
    from pipeline.config import SpeechConfig
    from pipeline.features import original_fbank
    from pipeline.media import decode_audio
    from pipeline.speech import voiced

    s, samples = run(media.moving, tmp_path, "voice2face")
    assert s.status == "ok" and len(samples) > 2
    utts = [npy(x["utt.npy"]) for x in samples]
    assert all(np.array_equal(u, utts[0]) for u in utts)  # one utterance per clip, carried by every window
    speech = voiced(decode_audio(media.moving, 0.0, None), SpeechConfig())
    np.testing.assert_array_equal(utts[0], original_fbank(speech))  # all the clip's speech, not one window
    meta = json.loads(samples[0]["json"])["utterance"]
    assert meta == {"features": "original", "frames": len(utts[0]), "speech_samples": len(speech),
                    "speech_s": round(len(speech) / 16000, 3)}  # fmt: skip
    assert len(utts[0]) > 3 * npy(samples[0]["mel.npy"]).shape[0]
    _, ours = run(media.moving, tmp_path / "v", "voice2face", extras={"utterance_features": "voiceface"})
    assert json.loads(ours[0]["json"])["utterance"]["features"] == "voiceface"
    assert npy(ours[0]["utt.npy"]).shape == (1 + (len(speech) - 400) // 160, 64)
    _, plain = run(media.moving, tmp_path / "p", None)
    assert "utt.npy" not in plain[0] and "utterance" not in json.loads(plain[0]["json"])
