"""Read and validate the two manifest formats (AVSpeech list, generic list) and the opt-out list.

A bad row never stops the others: it becomes a rejected ClipStatus that names its line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from .reasons import Reason
from .records import Clip, ClipStatus, seconds_to_samples

CLIP_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
YOUTUBE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
SPLITS = ("train", "val", "test")
GENERIC_COLUMNS = ("source", "id", "identity", "start", "end", "x", "y", "split", "gender")


@dataclass
class Manifest:
    clips: list[Clip] = field(default_factory=list)
    rejected: list[ClipStatus] = field(default_factory=list)  # bad rows, duplicates, opt-outs
    format: str = "generic"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.clips) + len(self.rejected)


class RowError(ValueError):
    pass


def youtube_id_of(source: str) -> str | None:
    """The YouTube video id in a bare id or a youtube.com / youtu.be URL, else None."""
    if YOUTUBE_ID_RE.match(source):
        return source
    u = urlparse(source)
    host = (u.hostname or "").lower()
    if host.endswith("youtu.be"):
        vid = u.path.lstrip("/").split("/")[0]
    elif host.endswith("youtube.com"):
        vid = parse_qs(u.query).get("v", [""])[0]
        if not vid and u.path.startswith(("/shorts/", "/embed/", "/live/")):
            vid = u.path.split("/")[2]
    else:
        return None
    return vid if YOUTUBE_ID_RE.match(vid or "") else None


def sanitize_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "clip"


def _number(value: str, name: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise RowError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise RowError(f"{name}={value!r} is not finite")
    return v


def _times(start: str, end: str) -> tuple[float | None, float | None]:
    s = _number(start, "start") if start.strip() else None
    e = _number(end, "end") if end.strip() else None
    if s is not None and s < 0:
        raise RowError(f"start={s} is negative")
    if s is not None and e is not None and s >= e:
        raise RowError(f"start={s} is not before end={e}")
    return s, e


def _hint(x: str, y: str) -> tuple[float | None, float | None]:
    if not x.strip() and not y.strip():
        return None, None
    if not x.strip() or not y.strip():
        raise RowError("x and y must be given together")
    fx, fy = _number(x, "x"), _number(y, "y")
    for name, v in (("x", fx), ("y", fy)):
        if not 0.0 <= v <= 1.0:
            raise RowError(f"{name}={v} is outside [0, 1]")
    return fx, fy


def _clip(line: int, source: str, clip_id: str, identity: str, s, e, x, y, split: str | None, yid: str | None) -> Clip:
    return Clip(
        clip_id=clip_id,
        source=source,
        identity=identity,
        line=line,
        start=None if s is None else seconds_to_samples(s),
        end=None if e is None else seconds_to_samples(e),
        x=x,
        y=y,
        split=split,
        youtube_id=yid,
    )


def parse_avspeech_row(row: list[str], line: int) -> Clip:
    if len(row) != 5:
        raise RowError(f"expected 5 columns youtube_id,start,end,x,y, got {len(row)}")
    yid, start, end, x, y = (c.strip() for c in row)
    if not YOUTUBE_ID_RE.match(yid):
        raise RowError(f"{yid!r} is not a YouTube id")
    if not start or not end:
        raise RowError("start and end are required")
    s, e = _times(start, end)
    fx, fy = _hint(x, y)
    if fx is None:
        raise RowError("x and y are required")
    clip_id = f"{yid}_{int(round(s * 1000))}"
    return _clip(line, yid, clip_id, yid, s, e, fx, fy, None, yid)


def parse_generic_row(row: dict[str, str], line: int) -> Clip:
    get = lambda k: (row.get(k) or "").strip()  # noqa: E731
    source = get("source")
    if not source:
        raise RowError("source is empty")
    s, e = _times(get("start"), get("end"))
    fx, fy = _hint(get("x"), get("y"))
    split = get("split") or None
    if split is not None and split not in SPLITS:
        raise RowError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    yid = youtube_id_of(source)
    clip_id = get("id")
    if clip_id:
        if not CLIP_ID_RE.match(clip_id):
            raise RowError(f"id={clip_id!r} may only use A-Z a-z 0-9 _ -")
    else:
        stem = yid or Path(urlparse(source).path).stem
        digest = hashlib.sha1(f"{source}|{s}|{e}".encode()).hexdigest()[:8]
        clip_id = f"{sanitize_id(stem)[:40]}-{digest}"
    identity = get("identity") or (yid or sanitize_id(Path(urlparse(source).path).stem))
    clip = _clip(line, source, clip_id, identity, s, e, fx, fy, split, yid)
    return dataclasses.replace(clip, gender=get("gender") or None)


def _is_generic_header(first: list[str]) -> bool:
    return "source" in [c.strip().lower() for c in first]


def read_optout(path: str | Path | None) -> set[str]:
    """Video ids, URLs or clip ids, one per line; '#' starts a comment."""
    if path is None or not Path(path).exists():
        return set()
    entries = set()
    for raw in Path(path).read_text().splitlines():
        entry = raw.split("#", 1)[0].strip()
        if entry:
            entries.add(entry)
            if vid := youtube_id_of(entry):
                entries.add(vid)
    return entries


def is_opted_out(clip: Clip, optout: set[str]) -> bool:
    keys = {clip.source, clip.clip_id, clip.youtube_id, youtube_id_of(clip.source)}
    return bool(keys & optout)


def read_manifest(path: str | Path, optout: set[str] | None = None) -> Manifest:
    """Parse a manifest; every row ends up either in .clips or in .rejected."""
    manifest = Manifest()
    for item in iter_manifest(path, optout, set(), manifest):
        (manifest.clips if isinstance(item, Clip) else manifest.rejected).append(item)
    _spread_split_overrides(manifest)
    return manifest


def iter_manifest(path: str | Path, optout: set[str] | None, seen, manifest: Manifest | None = None):
    """Stream a manifest's rows in file order: a Clip for each row that parsed, a rejected ClipStatus for the
    others. `seen` holds the clip ids met so far (`in` and `add`; a set, or one on disk for long manifests).
    Split overrides are not spread over identities here (see `_spread_split_overrides`). The detected format is
    set on `manifest` when one is given."""
    optout = optout or set()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        first = True
        for row in reader:
            # reader.line_num is the physical line a record ends on, which is what an editor shows
            line = reader.line_num
            if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if first:
                first = False
                if _is_generic_header(row):
                    header = [c.strip().lower() for c in row]
                    unknown = set(header) - set(GENERIC_COLUMNS)
                    if unknown:
                        raise ValueError(
                            f"{path}: unknown column(s) {sorted(unknown)}; known: {', '.join(GENERIC_COLUMNS)}"
                        )
                    if manifest is not None:
                        manifest.format = "generic"
                    continue
                if manifest is not None:
                    manifest.format = "avspeech"
            yield _parse_row(row, line, header, optout, seen)


def _parse_row(row: list[str], line: int, header: list[str] | None, optout: set[str], seen) -> Clip | ClipStatus:
    def reject(clip_id: str, reason: Reason, detail: str, identity: str | None = None) -> ClipStatus:
        return ClipStatus(id=clip_id, status="rejected", reason=reason, detail=f"line {line}: {detail}", line=line,
                          identity=identity)  # fmt: skip

    try:
        if header is None:
            clip = parse_avspeech_row(row, line)
        else:
            if len(row) > len(header):
                raise RowError(f"{len(row)} columns but the header has {len(header)}")
            clip = parse_generic_row(dict(zip(header, row, strict=False)), line)
    except RowError as err:
        return reject(_fallback_id(row, header, line), Reason.BAD_ROW, str(err))
    if clip.clip_id in seen:
        detail = f"id {clip.clip_id!r} already used by an earlier row"
        return reject(clip.clip_id, Reason.DUPLICATE_ID, detail, clip.identity)
    seen.add(clip.clip_id)
    if is_opted_out(clip, optout):
        return reject(clip.clip_id, Reason.OPTED_OUT, "listed in the opt-out file", clip.identity)
    return clip


def _spread_split_overrides(manifest: Manifest) -> None:
    """A `split` given on some rows of an identity applies to all its rows, so splits stay identity-disjoint."""
    chosen: dict[str, set[str]] = {}
    for c in manifest.clips:
        if c.split:
            chosen.setdefault(c.identity, set()).add(c.split)
    for identity, splits in chosen.items():
        if len(splits) > 1:
            manifest.warnings.append(
                f"identity {identity!r} is put in several splits by the manifest: {sorted(splits)}"
            )
    manifest.clips = [
        dataclasses.replace(c, split=sorted(chosen[c.identity])[0]) if not c.split and c.identity in chosen else c
        for c in manifest.clips
    ]


def _fallback_id(row: list[str], header: list[str] | None, line: int) -> str:
    """An id for a row that did not parse: its own id if it has a usable one, else its line."""
    if header is not None and "id" in header:
        idx = header.index("id")
        if idx < len(row) and CLIP_ID_RE.match(row[idx].strip()):
            return row[idx].strip()
    return f"line-{line}"
