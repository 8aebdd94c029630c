"""Flat, typed records passed between stages. Times are integer samples at 16 kHz."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import SAMPLE_RATE


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
        return dataclasses.asdict(self)

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
    speaker_choice: str | None = None  # "hint" or "largest" when several faces were seen
    cache_key: str | None = None  # clip config hash + pipeline version that produced it
    seconds: float = 0.0
    review: dict[str, int] | None = None  # an ok clip's windows by review outcome, when OUT has a review queue

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClipStatus:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
