import numpy as np
from PIL import Image

from pipeline.config import FaceConfig
from pipeline.demo.synth import astronaut, grace_hopper, no_face
from pipeline.faces import SpeakerTracker, embed_faces
from pipeline.records import Face


def canvas(*items, size=(640, 360)):
    """Paste (photo, face_px, centre) onto a grey frame; returns RGB uint8."""
    frame = Image.new("RGB", size, (58, 68, 80))
    for photo, face_px, (cx, cy) in items:
        l, t, r, b = photo.face_box
        s = face_px / (r - l)
        img = Image.fromarray(photo.image).resize((round(photo.image.shape[1] * s), round(photo.image.shape[0] * s)))
        frame.paste(img, (round(cx - (l + r) / 2 * s), round(cy - (t + b) / 2 * s)))
    return np.asarray(frame)


def test_single_face_is_aligned_and_cropped_rgb():
    frame = canvas((astronaut(), 120, (320, 180)))
    face = SpeakerTracker(FaceConfig(), None)(frame)
    assert isinstance(face, Face)
    [face] = embed_faces([face], FaceConfig())
    l, t, r, b = face.bbox
    assert l < 320 < r and t < 180 < b
    assert face.crop.shape == (224, 224, 3)
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert len(face.landmarks5) == 5 and all(l <= x <= r + 10 for x, _ in face.landmarks5)
    # skin in the centre of the crop is red-dominant in RGB (a BGR crop would be blue-dominant)
    centre = face.crop[80:150, 80:150].reshape(-1, 3).mean(0)
    assert centre[0] > centre[2] + 15


def test_hint_picks_the_speaker_and_no_hint_takes_the_largest():
    frame = canvas((astronaut(), 100, (160, 180)), (grace_hopper(), 150, (480, 180)))
    right = SpeakerTracker(FaceConfig(), (480 / 640, 0.5))(frame)
    left = SpeakerTracker(FaceConfig(), (160 / 640, 0.5))(frame)
    largest = SpeakerTracker(FaceConfig(), None)(frame)
    assert right.choice == "hint" and right.bbox[0] > 320
    assert left.choice == "hint" and left.bbox[2] < 320
    assert largest.choice == "largest" and largest.bbox[0] > 320 and largest.n_faces == 2
    # the two identities' embeddings differ, each crop is the chosen face
    right, left = embed_faces([right, left], FaceConfig())
    assert np.linalg.norm(right.embedding - left.embedding) > 0.6


def test_hint_far_from_every_face_is_speaker_not_found():
    frame = canvas((astronaut(), 120, (160, 180)))
    assert SpeakerTracker(FaceConfig(), (0.9, 0.9))(frame) == "speaker_not_found"


def test_no_face_and_face_too_small():
    assert SpeakerTracker(FaceConfig(), None)(canvas((no_face(), 200, (320, 180)))) == "no_face"
    small = canvas((astronaut(), 50, (320, 180)))
    assert SpeakerTracker(FaceConfig(min_face_px=64), None)(small) == "face_too_small"
    assert isinstance(SpeakerTracker(FaceConfig(min_face_px=40), None)(small), Face)


def test_tracker_follows_a_moving_face_through_its_roi():
    tracker = SpeakerTracker(FaceConfig(embeddings=False), None)
    for cx in (200, 230, 260, 290):
        face = tracker(canvas((astronaut(), 120, (cx, 180))))
        assert abs((face.bbox[0] + face.bbox[2]) / 2 - cx) < 15
    assert face.choice == "track"


def test_torch_and_dlib_embedders_agree():
    frame = canvas((grace_hopper(), 140, (320, 180)))
    a = SpeakerTracker(FaceConfig(), None)(frame)
    b = SpeakerTracker(FaceConfig(), None)(frame)
    [a] = embed_faces([a], FaceConfig(embedder="torch"))
    [b] = embed_faces([b], FaceConfig(embedder="dlib"))
    assert np.abs(a.embedding - b.embedding).max() < 1e-4
