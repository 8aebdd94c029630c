"""Extras stage: a face hit → its WebDataset sample: the window's WAV, the face crop JPEG, the json of
everything measured, and the members the config asks for (smaller faces, Wav2Pix's augmented windows,
Speech2Face's STFT, the log-mel, the clip's utterance mel, the dlib embedding)."""

from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
from PIL import Image

from .. import PIPELINE_VERSION
from ..config import SAMPLE_RATE, Config
from ..features import log_mel, speech2face_stft
from ..records import ClipAudio, ClipMedia, FaceHit, Sample, samples_to_seconds, window_key
from ..speech import voiced, wav_bytes
from ..utterance import Utterance, utterance_of


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def jpg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def augment_starts(key: str, centre: int, n_audio: int, cfg: Config) -> np.ndarray:
    """Wav2Pix's augmentation: `augment` window starts drawn uniformly from the context around `centre`
    (clip samples), seeded by (seed, key), so a rebuild draws the same windows."""
    W, half = cfg.speech.window_samples, int(cfg.extras.augment_context_s * SAMPLE_RATE) // 2
    hi_max = max(0, n_audio - W)
    lo, hi = min(max(0, centre - half), hi_max), min(max(0, centre + half - W), hi_max)
    seed = int.from_bytes(hashlib.sha1(f"{cfg.extras.seed}:{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(lo, max(lo, hi) + 1, cfg.extras.augment)


class SampleMaker:
    """Per clip: makes the sample of each face hit. `split` is the clip's split as packing will first see it."""

    def __init__(self, media: ClipMedia, audio: ClipAudio, split: str, cfg: Config):
        self.media, self.audio, self.split, self.cfg = media, audio, split, cfg

    @functools.cached_property
    def utterance(self) -> Utterance | None:
        """voice2face / CAE: the clip's utterance (all its speech, its own audio before any tiling), made once."""
        return utterance_of(self.audio.original, self.cfg) if self.cfg.extras.utterance else None

    def __call__(self, hit: FaceHit) -> Sample:
        cfg, clip, win, face = self.cfg, self.media.clip, hit.window, hit.face
        W = win.length
        clip_start = clip.start or 0
        meta = {
            "clip_id": clip.clip_id,
            "identity": clip.identity,
            "source": clip.source,
            "split": self.split,
            "window_index": win.index,
            "window_start": round(samples_to_seconds(clip_start + win.start), 6),
            "window_end": round(samples_to_seconds(clip_start + win.start + W), 6),
            "frame_time": round(samples_to_seconds(self.media.source.offset) + hit.frame_time, 6),
            "sample_rate": SAMPLE_RATE,
            "window_samples": W,
            "bbox": list(face.bbox),
            "landmarks5": face.landmarks5,
            "det_score": face.det_score,
            "face_px": face.width,
            "faces_seen": face.n_faces,
            "speaker_choice": str(face.choice),
            "speech_ratio": win.speech_ratio,
            "rms_dbfs": win.rms_dbfs,
            "crop_size": cfg.faces.crop_size,
            "pipeline_version": PIPELINE_VERSION,
            **hit.measures,
        }
        if clip.gender:
            meta["gender"] = clip.gender
        key = window_key(clip.clip_id, win.index)
        audio = self.audio.samples
        chunk = audio[win.start : win.start + W]
        members = {"wav": wav_bytes(chunk), "jpg": jpg_bytes(face.crop, cfg.faces.jpeg_quality)}
        if self.audio.tiled_from is not None:
            meta["tiled_from"] = self.audio.tiled_from  # samples of real audio the window repeats
            end = clip_start + win.start + min(W, self.audio.tiled_from)
            meta["window_end"] = round(samples_to_seconds(end), 6)
        ex = cfg.extras
        for size in ex.face_sizes:
            small = np.asarray(Image.fromarray(face.crop, "RGB").resize((size, size), Image.LANCZOS))
            members[f"face{size}.jpg"] = jpg_bytes(small, cfg.faces.jpeg_quality)
        if ex.augment:
            centre = int(round((hit.frame_time - self.media.file_start_s) * SAMPLE_RATE))
            starts = augment_starts(key, centre, len(audio), cfg)
            members["aug.npy"] = npy_bytes(np.stack([audio[s : s + W] for s in starts]).astype(np.int16))
            meta["aug_starts"] = [round(samples_to_seconds(clip_start + int(s)), 6) for s in starts]
        if ex.stft:
            members["stft.npy"] = npy_bytes(speech2face_stft(chunk))
        if ex.mel:
            speech = voiced(chunk, cfg.speech)
            speech = speech if len(speech) >= 400 else chunk  # too little VAD speech: the whole window
            members["mel.npy"] = npy_bytes(log_mel(speech))
            meta["mel_samples"] = len(speech)
        if (utt := self.utterance) is not None:  # every window carries it: no decision on one loses it
            members["utt.npy"] = npy_bytes(utt.mel)
            meta["utterance"] = utt.to_meta()
        if face.embedding is not None:
            members["dlib.npy"] = npy_bytes(face.embedding.astype(np.float32))
        return Sample(key, meta, members)
