"""VGG-Face features on the CPU with random weights saved in vgg_face_dag.pth's key format: loading, the
preprocessing formula, bf16 agreement, the pass over tars (cross-tar batches, nothing lost, idempotent, atomic),
the standalone command and the build flow. VGG16 costs ~0.5 s a face here, so every test uses a few faces."""

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main as cli
from pipeline.config import Config, ShardConfig, VGGFaceConfig
from pipeline.demo.synth import astronaut, grace_hopper
from pipeline.enrich import SIDECAR_DIR
from pipeline.models.vggface import (
    MEAN_RGB,
    MEMBER,
    STAGE_OFF,
    VGGFace,
    VGGFaceExtractor,
    add_vggface,
    add_vggface_to_build,
    decode_crop,
    get_extractor,
    init_random_,
    load_vggface,
    preprocess,
    read_dag_weights,
    resolve_weights,
)
from pipeline.shards import pack_shards
from pipeline.tars import read_samples, write_samples

DAG_KEYS = [f"{n}.{p}" for block in ("1_1 1_2", "2_1 2_2", "3_1 3_2 3_3", "4_1 4_2 4_3", "5_1 5_2 5_3")
            for n in (f"conv{b}" for b in block.split()) for p in ("weight", "bias")]  # fmt: skip
DAG_KEYS += [f"fc{i}.{p}" for i in (6, 7, 8) for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def random_state():
    return init_random_(VGGFace(), seed=0).state_dict()


@pytest.fixture(scope="module")
def weights(random_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("vggface") / "vgg_face_dag.pth"
    torch.save(dict(random_state), path)  # a plain {key: tensor} dict, as the converted file is
    yield path
    path.unlink()  # 580 MB: not left in pytest's kept temp dirs


@pytest.fixture(scope="module")
def cfg(weights) -> VGGFaceConfig:
    return VGGFaceConfig(weights=str(weights), device="cpu", precision="fp32", batch_size=4, decode_workers=2)


@pytest.fixture(scope="module")
def extractor(cfg, weights) -> VGGFaceExtractor:
    return get_extractor(cfg, weights)


def _jpg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpgs() -> list[bytes]:
    """Three different 224 px face crops, as JPEG like the samples' jpg."""
    out = []
    for photo, shift in ((astronaut(), 0), (grace_hopper(), 0), (astronaut(), 20)):
        l, t, r, b = photo.face_box
        m = (r - l) // 2
        crop = photo.image[max(0, t - m + shift) : b + m + shift, max(0, l - m) : r + m]
        out.append(_jpg(np.asarray(Image.fromarray(crop).resize((224, 224), Image.BILINEAR))))
    return out


@pytest.fixture(scope="module")
def reference(extractor, jpgs) -> np.ndarray:
    """fp32 features of the three crops, computed directly in one batch."""
    return extractor.features(np.stack([decode_crop(j) for j in jpgs])).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _sample(clip_id: str, i: int, jpg: bytes) -> dict:
    meta = {"clip_id": clip_id, "identity": clip_id, "split": "train", "window_index": i, "frame_time": i + 0.5,
            "window_start": float(i), "window_end": i + 1.0, "speech_ratio": 0.9, "face_px": 120}  # fmt: skip
    emb = io.BytesIO()
    np.save(emb, np.random.default_rng(i).standard_normal(128).astype(np.float32))
    return {"__key__": f"{clip_id}-{i:05d}", "wav": b"RIFF" + bytes([i]) * 64, "jpg": jpg,
            "json": json.dumps(meta, sort_keys=True).encode(), "dlib.npy": emb.getvalue()}  # fmt: skip


def _clip_tars(d: Path, jpgs: list[bytes], sizes=(3, 2)) -> list[Path]:
    """Per-clip tars of `sizes` samples, cycling through the crops; the crops' order is kept across tars."""
    d.mkdir(parents=True, exist_ok=True)
    tars, k = [], 0
    for c, n in enumerate(sizes):
        path = d / f"clip{c}.tar"
        write_samples(path, [_sample(f"clip{c}", i, jpgs[(k + i) % len(jpgs)]) for i in range(n)], mtime=0.0)
        tars.append(path)
        k += n
    return tars


def _members(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return tar.getnames()


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# -- the network ---------------------------------------------------------------------------------------------------


def test_dag_weights_load_and_give_a_4096_vector(weights, extractor, jpgs, reference):
    assert list(torch.load(weights, weights_only=True)) == DAG_KEYS
    model = load_vggface(weights)
    assert model.fc8.weight.shape == (2622, 4096) and model.fc6.weight.shape == (4096, 25088)
    assert reference.shape == (3, 4096) and reference[0].shape == (4096,)
    assert (reference >= 0).all() and (reference > 0).mean() > 0.2  # fc7 after ReLU, not degenerate
    assert _cosine(reference[0], reference[1]) < 0.999  # different faces, different features
    # the options: pre-ReLU fc7 (whose ReLU is the default feature), and fc6
    x = preprocess(decode_crop(jpgs[0])[None])
    with torch.inference_mode():
        pre = load_vggface(weights, relu=False)(x)[0].numpy()
        fc6 = load_vggface(weights, layer="fc6")(x)[0].numpy()
    assert (pre < 0).any() and pre.shape == fc6.shape == (4096,)
    np.testing.assert_allclose(np.maximum(pre, 0), reference[0], rtol=2e-3, atol=2e-3 * reference[0].max())


def test_conv_shaped_fc6_and_half_precision_files_load(random_state, tmp_path):
    state = {k: v.half() for k, v in random_state.items()}
    state["fc6.weight"] = state["fc6.weight"].reshape(4096, 512, 7, 7)  # as some conversions store it
    torch.save(state, tmp_path / "conv_fc6.pth")
    loaded = read_dag_weights(tmp_path / "conv_fc6.pth")
    (tmp_path / "conv_fc6.pth").unlink()
    assert loaded["fc6.weight"].shape == (4096, 25088) and loaded["fc6.weight"].dtype == torch.float32
    assert torch.equal(loaded["fc6.weight"], random_state["fc6.weight"].half().float())
    del state["fc8.bias"]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match="not vgg_face_dag weights"):
        read_dag_weights(tmp_path / "incomplete.pth")
    (tmp_path / "incomplete.pth").unlink()


def test_preprocessing_is_pixel_minus_mean_rgb_unscaled():
    y, x = np.mgrid[0:224, 0:224]
    img = np.stack([(x + y) % 256, x % 256, (3 * y) % 256], axis=-1).astype(np.uint8)
    out = preprocess(img[None])
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    expected = img.astype(np.float32).transpose(2, 0, 1) - np.array(MEAN_RGB, dtype=np.float32)[:, None, None]
    np.testing.assert_array_equal(out[0].numpy(), expected)
    assert out[0, 0, 0, 0].item() == -129.186279296875  # R channel, pixel 0: minus the R mean, no /255
    assert out[0, 1, 5, 200].item() == 200 - 104.76238250732422
    with pytest.raises(ValueError, match="uint8"):
        preprocess(img[None].astype(np.float32))


def test_bf16_agrees_with_fp32_on_the_cpu(cfg, weights, jpgs, reference):
    import dataclasses

    bf16 = VGGFaceExtractor(dataclasses.replace(cfg, precision="bf16"), weights)
    assert bf16.precision == "bf16" and bf16.model.fc7.weight.dtype == torch.bfloat16
    got = bf16.features(np.stack([decode_crop(j) for j in jpgs]))
    assert got.dtype == np.float16 and got.shape == (3, 4096)
    assert _cosine(got, reference).min() >= 0.999


def test_device_auto_without_cuda_falls_back_to_fp32_on_the_cpu(cfg, weights, monkeypatch):
    import dataclasses

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ex = VGGFaceExtractor(dataclasses.replace(cfg, device="auto", precision="bf16"), weights)
    assert ex.device.type == "cpu" and ex.precision == "fp32" and "CPU" in ex.describe()
    with pytest.raises(RuntimeError, match="no CUDA"):
        VGGFaceExtractor(dataclasses.replace(cfg, device="cuda"), weights)


def test_fixed_shape_batches_pad_and_keep_the_order(extractor, jpgs, reference, monkeypatch):
    """The CUDA batching (full padded batches, two alternating buffers) run on the CPU: same features, in order."""
    monkeypatch.setattr(extractor, "fixed_shape", True)
    crops = np.stack([decode_crop(jpgs[i]) for i in (2, 0, 1, 2, 0)])  # batches of 4 and 1 (padded to 4)
    got = extractor.features(crops).astype(np.float32)
    np.testing.assert_allclose(got, reference[[2, 0, 1, 2, 0]], rtol=1e-2, atol=1e-2 * reference.max())


# -- weights and config --------------------------------------------------------------------------------------------


def test_stage_is_off_without_weights_and_says_so_once(monkeypatch, capsys, tmp_path):
    from flows.build import vggface_weights

    monkeypatch.delenv("VGGFACE_WEIGHTS", raising=False)
    assert resolve_weights(VGGFaceConfig()) is None
    assert vggface_weights(VGGFaceConfig()) is None
    assert capsys.readouterr().out.count(STAGE_OFF) == 1
    (tmp_path / "shards").mkdir()
    assert cli(["vggface", str(tmp_path)]) == 2
    assert STAGE_OFF in capsys.readouterr().err


def test_weights_from_env_var_or_config(monkeypatch, weights, tmp_path):
    monkeypatch.setenv("VGGFACE_WEIGHTS", str(weights))
    assert resolve_weights(VGGFaceConfig()) == str(weights)
    other = tmp_path / "other.pth"
    other.write_bytes(b"x")
    assert resolve_weights(VGGFaceConfig(weights=str(other))) == str(other)  # the config key comes first
    monkeypatch.setenv("VGGFACE_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=r"\$VGGFACE_WEIGHTS"):
        resolve_weights(VGGFaceConfig())


def test_config_section_is_validated_and_not_part_of_the_clip_hash():
    cfg = Config.from_dict({"vggface": {"weights": "w.pth", "layer": "fc6", "precision": "fp16"}})
    assert cfg.vggface.layer == "fc6" and cfg.vggface.batch_size == 128
    assert cfg.clip_hash() == Config().clip_hash()  # turning the stage on redoes no clip
    with pytest.raises(ValueError, match="precision"):
        Config.from_dict({"vggface": {"precision": "int8"}})


# -- the pass over tars --------------------------------------------------------------------------------------------


def _packed(out: Path, tars: list[Path]) -> list[dict]:
    pack_shards(out, [(p, "train") for p in tars], ShardConfig())
    return [s for p in sorted((out / "shards").glob("*.tar")) for s in read_samples(p)]


def test_pass_writes_sidecars_and_packing_merges_them_losing_nothing(extractor, jpgs, reference, tmp_path):
    tars = _clip_tars(tmp_path / "clips", jpgs)  # 3 + 2 samples, batches of 4: one batch spans both tars
    before = {p: list(read_samples(p)) for p in tars}
    digests = {p: _sha(p) for p in tars}
    report = add_vggface(tars, extractor)
    assert (report.tars, report.samples, report.computed, report.rewritten) == (2, 5, 5, 2)
    assert {p: _sha(p) for p in tars} == digests  # the finished clip tars are never rewritten
    assert sorted(p.name for p in (tmp_path / SIDECAR_DIR).iterdir()) == ["clip0.tar", "clip1.tar"]  # no .partial
    assert [p.name for p in tmp_path.rglob("*.partial")] == []
    packed = iter(_packed(tmp_path / "out", tars))
    k = 0
    for p in tars:
        for old in before[p]:
            new = next(packed)
            assert new["__key__"] == old["__key__"]
            assert sorted(new) == sorted([*old, MEMBER])  # every member kept, plus the feature
            for m in ("wav", "jpg", "dlib.npy"):
                assert new[m] == old[m]
            meta = json.loads(new["json"])
            assert meta.pop("vggface") == extractor.record and meta == json.loads(old["json"])
            feat = np.load(io.BytesIO(new[MEMBER]))
            assert feat.dtype == np.float16 and feat.shape == (4096,)
            ref = reference[k % 3]
            np.testing.assert_allclose(feat.astype(np.float32), ref, rtol=1e-2, atol=1e-2 * ref.max())
            k += 1


def test_pass_is_idempotent_and_redoes_only_other_settings_or_crops(extractor, jpgs, tmp_path):
    tars = _clip_tars(tmp_path / "clips", jpgs)
    add_vggface(tars, extractor)
    sides = sorted((tmp_path / SIDECAR_DIR).glob("*.tar"))
    digests = {p: _sha(p) for p in sides}
    again = add_vggface(tars, extractor)
    assert (again.computed, again.rewritten) == (0, 0)
    assert {p: _sha(p) for p in sides} == digests
    first = [np.load(io.BytesIO(s[MEMBER])).astype(np.float32) for s in read_samples(sides[1])]
    # features recorded with other settings (e.g. other weights) are recomputed; nothing else is touched
    entries = list(read_samples(sides[1]))
    for s in entries:
        info = json.loads(s["vggface.json"])
        info["record"] = {**info["record"], "weights_sha1": "000000000000"}
        s["vggface.json"] = json.dumps(info).encode()
    write_samples(sides[1], entries, mtime=0.0)
    redo = add_vggface(tars, extractor)
    assert (redo.computed, redo.rewritten) == (2, 1)
    assert _sha(sides[0]) == digests[sides[0]]
    for s, f in zip(read_samples(sides[1]), first, strict=True):
        assert json.loads(s["vggface.json"])["record"] == extractor.record
        # another batch composition: equal up to float rounding, not to the byte
        np.testing.assert_allclose(np.load(io.BytesIO(s[MEMBER])).astype(np.float32), f, rtol=1e-2, atol=1e-2 * f.max())
    # a clip made again with another crop: its stale feature is neither merged nor kept
    samples = list(read_samples(tars[0]))
    samples[0]["jpg"] = jpgs[2]
    write_samples(tars[0], samples, mtime=0.0)
    assert all(MEMBER in s for s in _packed(tmp_path / "stale", tars)[1:])
    assert MEMBER not in _packed(tmp_path / "stale", tars)[0]
    assert (add_vggface(tars, extractor).computed, add_vggface(tars, extractor).computed) == (1, 0)


class _Crash(Exception):
    pass


class _FlakyExtractor:
    """Stands in for the model: a constant feature per crop, and a crash after `crash_after` crops."""

    record = {"layer": "fc7", "relu": True, "weights_sha1": "fake00000000"}

    def __init__(self, crash_after: int | None = None):
        self.crash_after = crash_after

    def features_from_jpgs(self, jpgs):
        for n, jpg in enumerate(jpgs):
            if n == self.crash_after:
                raise _Crash
            yield np.full(4096, len(jpg) % 7, dtype=np.float16)


def test_a_killed_pass_leaves_whole_sidecars_and_a_rerun_finishes(jpgs, tmp_path):
    tars = _clip_tars(tmp_path / "clips", jpgs, sizes=(2, 2, 2))
    original = {p: _sha(p) for p in tars}
    with pytest.raises(_Crash):
        add_vggface(tars, _FlakyExtractor(crash_after=3))  # mid-way through the second tar
    assert not list(tmp_path.rglob("*.partial"))
    side = tmp_path / SIDECAR_DIR
    assert [p.name for p in side.iterdir()] == ["clip0.tar"]  # finished and renamed; the others not begun
    assert all(MEMBER in s for s in read_samples(side / "clip0.tar"))
    report = add_vggface(tars, _FlakyExtractor())
    assert (report.computed, report.rewritten) == (4, 2)
    assert all(MEMBER in s for p in tars for s in read_samples(side / p.name))
    assert {p: _sha(p) for p in tars} == original


def _finished_build(out: Path, jpgs: list[bytes]) -> list[Path]:
    """OUT as a build leaves it: clip tars with their finished statuses, clips.jsonl and shards."""
    from pipeline.records import ClipStatus
    from pipeline.tars import atomic_write_bytes

    clips = _clip_tars(out / ".work" / "clips", jpgs)
    rows = [ClipStatus(f"clip{c}", "ok", split=split, identity=f"clip{c}", windows_written=n)
            for c, (split, n) in enumerate([("train", 3), ("val", 2)])]  # fmt: skip
    for r in rows:
        atomic_write_bytes(out / ".work" / "clips" / f"{r.id}.json", json.dumps(r.to_dict()).encode())
    (out / "clips.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    pack_shards(out, [(clips[0], "train"), (clips[1], "val")], ShardConfig(maxcount=2))
    return clips


def test_standalone_command_adds_features_to_the_shards_through_sidecars(cfg, extractor, jpgs, tmp_path):
    out = tmp_path / "out"
    clips = _finished_build(out, jpgs)
    clip_digests = {p: _sha(p) for p in clips}
    config = tmp_path / "c.yaml"
    config.write_text("vggface:\n  device: cpu\n  precision: fp32\n  batch_size: 4\n  decode_workers: 2\n")
    config.write_text(config.read_text() + "shards:\n  maxcount: 2\n")
    assert cli(["vggface", str(out), "--config", str(config), "--weights", cfg.weights]) == 0
    shards = sorted((out / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    in_shards = {s["__key__"]: s for p in shards for s in read_samples(p)}
    assert len(in_shards) == 5 and all(np.load(io.BytesIO(s[MEMBER])).shape == (4096,) for s in in_shards.values())
    assert all(json.loads(s["json"])["vggface"] == extractor.record for s in in_shards.values())
    assert {p: _sha(p) for p in clips} == clip_digests  # read, never rewritten
    # a re-pack from the clip tars and their sidecars gives the same shards, features included
    digests = {p.name: _sha(p) for p in shards}
    pack_shards(out, [(clips[0], "train"), (clips[1], "val")], ShardConfig(maxcount=2))
    assert {p.name: _sha(p) for p in sorted((out / "shards").glob("*.tar"))} == digests
    report = add_vggface_to_build(out, extractor)
    assert (report.computed, report.rewritten) == (0, 0)


# -- the build flow ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_flow_adds_vggface_to_every_sample(media, prefect_harness, weights, tmp_path, capsys):
    shutil.copy(media.stereo48k, tmp_path / "grace.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,id,identity\ngrace.mp4,grace1,grace\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"vggface:\n  weights: {weights}\n  batch_size: 4\n")  # device auto: the CPU here
    out = tmp_path / "out"
    from flows.build import run_build
    from tests.test_build import digest, read_shards

    summary = run_build(manifest, out, config=config, workers=1)
    samples = read_shards(out)
    assert len(samples) == summary["samples"] >= 3
    for s in samples:
        feat = np.load(io.BytesIO(s[MEMBER]))
        assert feat.dtype == np.float16 and feat.shape == (4096,) and np.isfinite(feat).all()
        assert json.loads(s["json"])["vggface"]["layer"] == "fc7"
    assert STAGE_OFF not in "".join(capsys.readouterr())
    before = digest(out)
    again = run_build(manifest, out, config=config, workers=1)  # nothing to redo: no clip, no feature
    assert again["clips_cached"] == 1 and digest(out) == before
