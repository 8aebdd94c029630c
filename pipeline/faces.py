"""dlib face stage: find the speaker's face in a frame, align it with the 5-point predictor,
crop it to RGB and embed it with dlib's ResNet.

Detection is the hot path, so a tracker per clip searches a region around the previous face, rescaled
so the face is about `detect_face_px` wide (HOG's 80 px window), and falls back to the whole frame.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .config import FaceConfig
from .reasons import Reason
from .records import Face, SpeakerChoice

Box = tuple[int, int, int, int]  # left, top, right, bottom in source-frame pixels
FULL_FRAME_SIDE = 640  # first full-frame pass downsizes to this long side (finds faces >= 80/640 of it)

_local = threading.local()


class DlibModels:
    """dlib's HOG detector, 5-point predictor and ResNet embedder, loaded once per thread
    (dlib's DNN keeps scratch buffers, so one instance must not serve two threads at once)."""

    def __init__(self):
        import dlib

        with warnings.catch_warnings():  # it imports the deprecated pkg_resources (hence setuptools<81)
            warnings.simplefilter("ignore")
            import face_recognition_models as frm

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self._frm = frm
        self._predictor68 = None

    def landmarks68(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks of the face in `box` (the model is loaded on first use: only AV sync needs it)."""
        if self._predictor68 is None:
            self._predictor68 = self.dlib.shape_predictor(self._frm.pose_predictor_model_location())
        shape = self._predictor68(rgb, self.dlib.rectangle(*box))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)

    @classmethod
    def get(cls) -> DlibModels:
        if getattr(_local, "models", None) is None:
            _local.models = cls()
        return _local.models


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def detect(models: DlibModels, rgb: np.ndarray, scale: float, upsample: int, origin=(0, 0)) -> list[Detection]:
    """HOG detections in `rgb` resized by `scale`, mapped back to source pixels (+ origin)."""
    img = rgb
    if abs(scale - 1.0) > 1e-3:
        h, w = rgb.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    rects, scores, _ = models.detector.run(img, upsample, 0.0)
    ox, oy = origin
    return [
        Detection(
            (
                ox + round(r.left() / scale),
                oy + round(r.top() / scale),
                ox + round(r.right() / scale),
                oy + round(r.bottom() / scale),
            ),
            float(s),
        )
        for r, s in zip(rects, scores, strict=True)
    ]


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


class SpeakerTracker:
    """Per-clip state: picks the speaker's face in successive frames of one clip."""

    def __init__(self, cfg: FaceConfig, hint: tuple[float, float] | None, models: DlibModels | None = None):
        self.cfg = cfg
        self.hint = hint
        self.models = models or DlibModels.get()
        self.prev: Detection | None = None
        self.candidates = False  # several faces and no hint: return them all (`others`), AV sync chooses
        self.several = False  # ... and several faces have been seen in this clip: every frame is searched whole
        self.others: list[Face] = []  # the other faces of the last frame, when candidates are on
        self.found: list[Detection] = []  # ... their detections

    # -- detection -------------------------------------------------------------------------------
    def _search_roi(self, rgb: np.ndarray, margin: float) -> list[Detection]:
        p, (h, w) = self.prev, rgb.shape[:2]
        m = margin * p.width
        l, t = max(0, int(p.box[0] - m)), max(0, int(p.box[1] - m))
        r, b = min(w, int(p.box[2] + m)), min(h, int(p.box[3] + m))
        if r - l < 16 or b - t < 16:
            return []
        scale = min(2.0, self.cfg.detect_face_px / max(p.width, 1))
        return detect(self.models, rgb[t:b, l:r], scale, 0, origin=(l, t))

    def _search_frame(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        if max(h, w) > FULL_FRAME_SIDE:
            found = detect(self.models, rgb, FULL_FRAME_SIDE / max(h, w), 0)
            if found:
                return found
        for up in range(0, self.cfg.max_upsample + 1):
            found = detect(self.models, rgb, 1.0, up)
            if found:
                return found
        return []

    def _pick(self, found: list[Detection], frame_wh: tuple[int, int]) -> tuple[Detection | None, SpeakerChoice]:
        if self.prev is not None:
            near = min(found, key=lambda d: _dist(d.centre, self.prev.centre))
            if _dist(near.centre, self.prev.centre) <= 2 * self.prev.width:
                return near, SpeakerChoice.TRACK
        if self.hint is not None:
            point = (self.hint[0] * frame_wh[0], self.hint[1] * frame_wh[1])
            near = min(found, key=lambda d: _dist(d.centre, point))
            if _dist(near.centre, point) <= self.cfg.hint_max_dist * max(near.width, 1):
                return near, SpeakerChoice.HINT
            return None, SpeakerChoice.HINT
        if len(found) == 1:
            return found[0], SpeakerChoice.ONLY
        return max(found, key=lambda d: d.width), SpeakerChoice.LARGEST

    def reset(self) -> None:
        """Forget the previous face (after a shot cut): the next frame is searched whole."""
        self.prev = None

    def find(self, rgb: np.ndarray) -> tuple[Detection | None, SpeakerChoice | Reason, int]:
        """(speaker detection, how it was chosen, faces seen), or (None, reason, faces seen)."""
        h, w = rgb.shape[:2]
        self.found = []
        for margin in self.cfg.roi_margins if self.prev is not None and not self.several else ():
            if found := self._search_roi(rgb, margin):
                best = min(found, key=lambda d: _dist(d.centre, self.prev.centre))
                return best, SpeakerChoice.TRACK, len(found)
        found = self._search_frame(rgb)
        if not found:
            return None, Reason.NO_FACE, 0
        if self.candidates and self.hint is None and len(found) > 1:
            self.several = True
        det, choice = self._pick(found, (w, h))
        if self.several:
            choice = SpeakerChoice.SYNC
            largest = sorted(found, key=lambda d: -d.width)[: self.cfg.max_candidates]
            self.found = [d for d in largest if d is not det]
        if det is None:
            return None, Reason.SPEAKER_NOT_FOUND, len(found)
        return det, choice, len(found)

    # -- the whole stage -------------------------------------------------------------------------
    def __call__(self, rgb: np.ndarray) -> Face | Reason:
        """The aligned speaker face of one frame, or the reason there is none."""
        det, how, n = self.find(rgb)
        self.others = []
        if det is None:
            return how  # type: ignore[return-value]
        self.prev = det
        self.others = [self._face(rgb, d, how, n) for d in self.found if d.width >= self.cfg.min_face_px]
        if det.width < self.cfg.min_face_px:
            return Reason.FACE_TOO_SMALL
        return self._face(rgb, det, how, n)

    def _face(self, rgb: np.ndarray, det: Detection, how, n: int) -> Face:
        """The aligned face of one detection."""
        dlib = self.models.dlib
        rect = dlib.rectangle(*det.box)
        shape = self.models.predictor(rgb, rect)
        landmarks = [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]
        crop = np.asarray(dlib.get_face_chip(rgb, shape, size=self.cfg.crop_size, padding=self.cfg.crop_padding))
        # the ResNet embedder was trained on 150 px chips with padding 0.25, whatever our crop settings are
        chip = np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25)) if self.cfg.embeddings else None
        return Face(det.box, landmarks, round(det.score, 4), crop, chip, n, how)


def embed_faces(faces: list[Face], cfg: FaceConfig, models: DlibModels | None = None) -> list[Face]:
    """The faces with their 128-D dlib ResNet embedding from their chip, computed as one batch (faces with no
    chip, or embedded already, come back as they are).

    The default backend runs dlib's own weights in torch (pipeline/models/dlib_resnet.py: the same vectors to
    ~1e-6, ~14x faster on a CPU); `embedder: dlib` calls dlib itself."""
    todo = [i for i, f in enumerate(faces) if f.chip is not None and f.embedding is None]
    if not todo:
        return list(faces)
    chips = [faces[i].chip for i in todo]
    if cfg.embedder == "torch":
        from .models.dlib_resnet import embed_chips

        vectors = embed_chips(_torch_embedder(cfg.torch_threads), np.stack(chips))
    else:
        vectors = (models or DlibModels.get()).encoder.compute_face_descriptor(chips)
    out = list(faces)
    for i, vec in zip(todo, vectors, strict=True):
        out[i] = replace(out[i], embedding=np.asarray(vec, dtype=np.float32))
    return out


@functools.cache
def _torch_embedder(threads: int):
    """One shared model per process (inference is thread-safe); torch threads capped, since clips run in parallel."""
    import torch

    from .models.dlib_resnet import load_dlib_resnet

    if threads > 0:
        torch.set_num_threads(threads)
    return load_dlib_resnet()
