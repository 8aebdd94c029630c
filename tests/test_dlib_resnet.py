"""pipeline.models.dlib_resnet against dlib itself: the torch port must give dlib's own descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.demo.synth import astronaut, grace_hopper

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")
dr = pytest.importorskip("pipeline.models.dlib_resnet")

TOL = 1e-4  # measured max abs difference: ~3e-7 (descriptor entries are up to ~0.4)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


@pytest.fixture(scope="module")
def dlib_models():
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )


@pytest.fixture(scope="module")
def faces(dlib_models):
    """(name, identity, image, 5-point shape, 150x150 chip) for each photo, a 0.7x rescaled photo and a
    mirrored chip."""
    detector, predictor, _ = dlib_models
    out = []
    for photo in (astronaut(), grace_hopper()):
        for scale in (1.0, 0.7):
            img, box = photo.image, photo.face_box
            if scale != 1.0:
                h, w = img.shape[:2]
                img = np.asarray(Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
                box = tuple(round(v * scale) for v in box)
            dets = list(detector(img, 1))
            assert dets, f"no face found in {photo.name} x{scale}"
            det = max(dets, key=lambda d: _overlap((d.left(), d.top(), d.right(), d.bottom()), box))
            shape = predictor(img, det)
            chip = np.asarray(dlib.get_face_chip(img, shape, 150, 0.25))
            out.append((f"{photo.name}@{scale}", photo.name, img, shape, chip))
        out.append((f"{photo.name}-mirrored", photo.name, None, None, np.ascontiguousarray(out[-2][4][:, ::-1])))
    return out


@pytest.fixture(scope="module")
def model():
    return dr.load_dlib_resnet()


def test_parser_reads_the_whole_model_file():
    net = dr.read_dlib_net()
    assert net.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert len(net.layers) == 108
    assert sum(layer.kind == "con" for layer in net.layers) == 29
    n_params = sum(v.size for layer in net.layers for v in layer.params.values() if isinstance(v, np.ndarray))
    assert n_params == 5_614_592
    assert dr.read_dlib_net() is net  # memoised


def test_embeddings_match_dlib(model, faces, dlib_models):
    encoder = dlib_models[2]
    chips = np.stack([f[4] for f in faces])
    ours = dr.embed_chips(model, chips)
    ref = np.array([np.asarray(encoder.compute_face_descriptor(c)) for c in chips], dtype=np.float64)
    assert ours.shape == (len(chips), 128) and ours.dtype == np.float32
    diff = np.abs(ours - ref).max()
    print(f"max abs difference vs dlib over {len(chips)} chips: {diff:.3g}")
    assert diff < TOL

    names = [f[1] for f in faces]
    for emb in (ref, ours):
        for i in range(len(faces)):
            for j in range(i + 1, len(faces)):
                d = np.linalg.norm(emb[i] - emb[j])
                if names[i] != names[j]:
                    assert d > 0.6, (faces[i][0], faces[j][0], d)
                else:
                    assert d < 0.5, (faces[i][0], faces[j][0], d)


def test_dlib_descriptor_from_image_is_the_chip_descriptor(faces, dlib_models):
    """compute_face_descriptor(img, shape) = the net on get_face_chip(img, shape, 150, 0.25), run once."""
    encoder = dlib_models[2]
    _, _, img, shape, chip = faces[0]
    a = np.asarray(encoder.compute_face_descriptor(img, shape))
    b = np.asarray(encoder.compute_face_descriptor(chip))
    np.testing.assert_array_equal(a, b)


def test_embed_chips_batching_and_validation(model, faces):
    chips = np.stack([f[4] for f in faces])
    whole = dr.embed_chips(model, chips)
    np.testing.assert_allclose(dr.embed_chips(model, chips, batch_size=2), whole, atol=1e-5)
    assert dr.embed_chips(model, chips[:0]).shape == (0, 128)
    with pytest.raises(ValueError):
        dr.embed_chips(model, chips.astype(np.float32))
    with pytest.raises(ValueError):
        dr.embed_chips(model, chips[:, :100])


def test_rejects_a_file_that_is_not_the_model():
    with pytest.raises(dr.DlibFormatError):
        dr.parse_dlib_net(Path(frm.pose_predictor_five_point_model_location()).read_bytes())
    data = Path(frm.face_recognition_model_location()).read_bytes()
    with pytest.raises(dr.DlibFormatError):
        dr.parse_dlib_net(data[:-100])
