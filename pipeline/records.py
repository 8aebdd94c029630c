"""The typed records of a build: a manifest row (Clip), its status row (ClipStatus), and what passes between the
clip stages (pipeline/stages). Times are integer 16 kHz samples; a frame's time is its pts as ffmpeg gives it.

The stage records are frozen: a stage never changes a record it was given but returns a new one
(`dataclasses.replace`), so any stage can be called alone, on records, in a test.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import SAMPLE_RATE
from .reasons import Reason

if TYPE_CHECKING:
    from .media import MediaInfo
    from .sources import Source


def seconds_to_samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def samples_to_seconds(samples: int) -> float:
    return samples / SAMPLE_RATE


@dataclass(frozen=True)
class Clip:
    """One manifest row that parsed: what to fetch and how to label it."""

    clip_id: str  # [A-Za-z0-9_-]+, unique in the manifest
    source: str  # YouTube id, http(s) URL or local path, as written in the manifest
    identity: str
    line: int  # 1-based line in the manifest file, for messages
    start: int | None = None  # source-timeline samples; None = from the beginning
    end: int | None = None  # None = to the end
    x: float | None = None  # speaker's face centre hint, normalised to [0, 1]
    y: float | None = None
    split: str | None = None  # train / val / test override
    youtube_id: str | None = None
    gender: str | None = None  # as given by the manifest (Wav2Pix channel lists carry it)
    source_kind: str | None = None  # file | url | youtube (manifest.classify_source); None: not classified
    source_rule: str = ""  # which rule made it that kind, for status details

    @property
    def hint(self) -> tuple[float, float] | None:
        return None if self.x is None or self.y is None else (self.x, self.y)

    def to_dict(self) -> dict:
        # flat fields: a shallow dict (dataclasses.asdict deep-copies, which a million rows feel)
        return {name: getattr(self, name) for name in _field_names(Clip)}

    @classmethod
    def from_dict(cls, d: dict) -> Clip:
        return cls(**d)


@dataclass
class ClipStatus:
    """The one status row a manifest row gets in clips.jsonl."""

    id: str
    status: str  # ok | rejected | failed
    reason: str | None = None
    detail: str = ""
    windows_written: int = 0
    line: int | None = None
    identity: str | None = None
    split: str | None = None
    windows_total: int = 0  # windows cut from the clip's audio
    window_rejections: dict[str, int] = field(default_factory=dict)  # reason -> count
    window_flags: dict[str, int] = field(default_factory=dict)  # flag -> windows flagged (av_unsynced)
    av_sync: float | None = None  # median AV-sync score of the written windows: is the kept face the speaker?
    av_offset_s: float | None = None  # ... their median audio offset (s, > 0: the sound comes after the picture)
    av_confidence: float | None = None  # ... and the median confidence of their offsets
    speaker_choice: str | None = None  # "hint", "sync" or "largest" when several faces were seen
    cache_key: str | None = None  # clip config hash + pipeline version that produced it
    seconds: float = 0.0
    review: dict[str, int] | None = None  # an ok clip's windows by review outcome, when OUT has a review queue

    def to_dict(self) -> dict:
        # the dicts are copied, so the result can be changed without changing the status
        d = {name: getattr(self, name) for name in _field_names(ClipStatus)}
        for name in ("window_rejections", "window_flags", "review"):
            if d[name] is not None:
                d[name] = dict(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClipStatus:
        names = _field_names(cls)
        return cls(**{k: v for k, v in d.items() if k in names})


@functools.cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class SpeakerChoice(StrEnum):
    """How the speaker's face was chosen among the faces of a frame."""

    ONLY = "only"  # the one face there
    HINT = "hint"  # nearest the manifest's x,y
    LARGEST = "largest"  # several faces and no hint: the largest
    TRACK = "track"  # near the speaker's face in the previous frame
    SYNC = "sync"  # several faces and no hint: the one whose mouth moves with the voice (AV sync)


class Status(StrEnum):
    KEPT = "kept"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ClipMedia:
    """The source stage's result: a clip's video file and where the clip lies on the file's own timeline."""

    clip: Clip
    source: Source
    info: MediaInfo
    file_start: int  # samples from the file's start to the clip's start (a downloaded segment starts later)
    duration: int | None  # the clip's length in samples; None: to the end of the file

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def file_start_s(self) -> float:
        return samples_to_seconds(self.file_start)


@dataclass(frozen=True, eq=False)
class ClipAudio:
    """The decode stage's audio: 16 kHz mono int16 of the clip, as windows are cut from it."""

    samples: np.ndarray  # what windows are cut from (a short clip tiled to one window when extras.tile_short)
    original: np.ndarray  # as the video has it, before any tiling (the AV-sync score compares it with the mouth)
    tiled_from: int | None = None  # samples of real audio a tiled clip repeats


@dataclass(frozen=True)
class Window:
    """One fixed-length window of the clip's audio."""

    index: int  # k-th window of the clip
    start: int  # sample offset in ClipAudio.samples
    length: int  # samples
    speech_ratio: float  # share of webrtcvad frames that are speech
    rms_dbfs: float
    measures: dict = field(default_factory=dict)  # what the speech filters measured

    def with_measures(self, **measures) -> Window:
        return replace(self, measures={**self.measures, **measures})


@dataclass(frozen=True, eq=False)
class Face:
    """The speaker's aligned face in one frame (the detector's box in source-frame pixels)."""

    bbox: tuple[int, int, int, int]
    landmarks5: list[list[int]]
    det_score: float
    crop: np.ndarray  # (crop_size, crop_size, 3) uint8 RGB
    chip: np.ndarray | None  # (150, 150, 3): the embedder's own aligned chip, when embeddings are on
    n_faces: int  # faces seen in the search area
    choice: SpeakerChoice
    embedding: np.ndarray | None = None  # (128,) float32

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]


@dataclass(frozen=True, eq=False)
class FaceHit:
    """A window and the speaker's face in its frame, with everything measured so far."""

    window: Window
    frame_time: float  # the frame's own pts, seconds on the file's timeline (as ffmpeg reports it)
    face: Face
    measures: dict = field(default_factory=dict)  # the window's, the face filters' and later stages' measures
    candidates: tuple[FaceHit, ...] = ()  # the frame's other faces that passed the filters, when the AV-sync
    # stage chooses the speaker among them (several faces, no hint)

    def with_measures(self, **measures) -> FaceHit:
        return replace(self, measures={**self.measures, **measures})


@dataclass(frozen=True, eq=False)
class Verdict:
    """What became of one window. A rejected window keeps its reason, its measures and, when a face was found,
    the face (so it can be written as a sample and rescued by a reviewer)."""

    window: Window
    status: Status
    reason: Reason | None = None
    hit: FaceHit | None = None
    detail: str = ""

    @property
    def measures(self) -> dict:
        return self.hit.measures if self.hit is not None else self.window.measures

    @classmethod
    def reject(cls, window: Window, reason: Reason, hit: FaceHit | None = None, detail: str = "") -> Verdict:
        return cls(window, Status.REJECTED, reason, hit, detail)


@dataclass(frozen=True, eq=False)
class Sample:
    """One WebDataset sample: its key, its json (a dict until it is written) and its other members as bytes."""

    key: str
    meta: dict
    members: dict[str, bytes]

    def encoded(self) -> dict[str, bytes | str]:
        """The sample as a tar writer takes it; the json is encoded here, once."""
        return {"__key__": self.key, **self.members, "json": json.dumps(self.meta, sort_keys=True).encode()}


def window_key(clip_id: str, index: int) -> str:
    return f"{clip_id}-{index:05d}"
