"""The seeds' metrics.

- Face-likeness (Wav2Pix): the share of images on which dlib finds all 68 landmarks: the HOG detector finds a
  face (upsample 1) and the 68-point predictor's parts all lie inside the image. Each image is first given a
  CONTEXT margin (edge pixels repeated) and upscaled to DETECT_SIZE px: HOG needs some background around a face
  (on Wav2Pix's own tight crops it finds 8 % of faces as they are, 96 % with the margin) and finds no face under
  ~80 px (upsample 1: ~40 px), while a 64 px output holds a ~35 px face.
- Identity (Wav2Pix): top-1 / top-5 retrieval of the speaker among the split's identities, by the Euclidean
  distance from the generated face's dlib embedding to each identity's centroid of real `dlib.npy` embeddings.
  The 150 px chip for the embedding is dlib's aligned chip when a face is found, else the whole image resized:
  our crops are already aligned like a dlib chip (5-point landmarks, padding 0.25), so both agree on real crops.
- Speech2Face: recall@K of the true face feature among all the split's face features, by cosine similarity.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

DETECT_SIZE = 256
CONTEXT = 0.25  # margin added on each side, as a share of the image's size
CHIP_SIZE = 150
CHIP_PADDING = 0.25  # as the shards' crops and dlib's own face chips

_local = threading.local()


def _models():
    """dlib's HOG detector and 68-point predictor, once per thread (dlib objects are not shared across threads)."""
    if getattr(_local, "models", None) is None:
        import dlib

        with warnings.catch_warnings():  # it imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models as frm

        _local.models = (
            dlib,
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(frm.pose_predictor_model_location()),
        )
    return _local.models


def _upscaled(image: np.ndarray) -> np.ndarray:
    """The image with its CONTEXT margin, upscaled to at least DETECT_SIZE px."""
    from PIL import Image

    m = round(CONTEXT * max(image.shape[:2]))
    image = np.pad(image, ((m, m), (m, m), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    if max(h, w) >= DETECT_SIZE:
        return np.ascontiguousarray(image)
    s = DETECT_SIZE / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.BICUBIC))


def landmarks68(image: np.ndarray):
    """(the upscaled image, the largest face's 68-point shape or None, whether all 68 parts lie inside)."""
    dlib, detector, predictor = _models()
    img = _upscaled(image)
    dets = detector(img, 1)
    if len(dets) == 0:
        return img, None, False
    det = max(dets, key=lambda r: r.area())
    shape = predictor(img, det)
    h, w = img.shape[:2]
    inside = shape.num_parts == 68 and all(0 <= p.x < w and 0 <= p.y < h for p in shape.parts())
    return img, shape, inside


def landmark_detection_rate(images) -> float:
    """Share of uint8 (H, W, 3) RGB images on which dlib finds a face and all 68 landmarks inside the image."""
    images = list(images)
    return float(np.mean([landmarks68(im)[2] for im in images])) if images else 0.0


def face_chip(image: np.ndarray) -> np.ndarray:
    """A 150 px chip for dlib's embedding: dlib's aligned chip when a face is found, else the image resized."""
    from PIL import Image

    img, shape, _ = landmarks68(image)
    if shape is not None:
        dlib = _models()[0]
        return np.asarray(dlib.get_face_chip(img, shape, CHIP_SIZE, CHIP_PADDING))
    return np.asarray(Image.fromarray(image).resize((CHIP_SIZE, CHIP_SIZE), Image.BICUBIC))


def embed_faces(images) -> np.ndarray:
    """uint8 RGB images → (N, 128) dlib embeddings (pipeline.models.dlib_resnet: dlib's network in torch, batched)."""
    from pipeline.models.dlib_resnet import embed_chips, load_dlib_resnet

    chips = np.stack([face_chip(im) for im in images])
    return embed_chips(load_dlib_resnet(), chips)


def identity_centroids(embeddings: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct labels, each one's mean embedding)."""
    labels = np.asarray(labels)
    names = np.unique(labels)
    return names, np.stack([embeddings[labels == n].mean(0) for n in names])


def identity_topk(embeddings: np.ndarray, labels, names: np.ndarray, centroids: np.ndarray, ks=(1, 5)) -> dict:
    """Top-k identity retrieval: is the true label among the k centroids nearest to each embedding?"""
    d = np.linalg.norm(embeddings[:, None, :] - centroids[None, :, :], axis=2)
    order = names[np.argsort(d, axis=1)]
    hit = order == np.asarray(labels)[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


def recall_at_k(pred: np.ndarray, true: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@K of each row's true feature among all rows' true features, by cosine similarity to the prediction
    (rank = how many other features score strictly higher than the true one)."""
    p = pred / (np.linalg.norm(pred, axis=1, keepdims=True) + 1e-12)
    t = true / (np.linalg.norm(true, axis=1, keepdims=True) + 1e-12)
    sim = p @ t.T
    rank = (sim > np.diag(sim)[:, None]).sum(1)
    return {k: float((rank < k).mean()) for k in ks}
