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

from .reasons import InputError, Reason
from .records import Clip, ClipStatus, seconds_to_samples

CLIP_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_ID_CHARS = 128  # ids name files (<id>.tar, <id>.json): well under any filesystem's 255-byte name limit
MAX_FIELD_CHARS = 8192  # a longer field is not a path, URL, name or number: the row is bad, the file is not
MAX_SECONDS = 10 * 24 * 3600.0  # no video is longer: a time beyond it is a typo (or 1e300)
CSV_FIELD_LIMIT = 64 << 20  # csv's own limit (128 KiB) would stop the whole file at one long field
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


SOURCE_PREFIXES = ("file:", "yt:")
BARE_ID_RULE = "a bare 11-character name: a local file of that name if there is one, else a YouTube id"


def classify_source(source: str) -> tuple[str, str, str]:
    """(kind, value, rule): what a manifest `source` names, with the prefix removed, and the rule that said so.

    Explicit: `yt:ID` (or `yt:` + a YouTube URL) is a YouTube video, `file:PATH` (or a `file://` URL) a local file,
    `http(s)://…` a URL (a youtube.com / youtu.be one is a YouTube video). Unprefixed names keep their old
    meaning: a bare 11-character name of A-Z a-z 0-9 _ - is a local file when one exists, else a YouTube id;
    anything else is a local path."""
    if source.startswith("yt:"):
        value = source[3:].strip()
        vid = youtube_id_of(value)
        if vid is None:
            raise RowError(f"source {source!r}: yt: must be followed by an 11-character YouTube id or a YouTube URL")
        return "youtube", vid, "yt: prefix"
    if source.startswith("file://"):
        return "file", urlparse(source).path, "file:// URL"
    if source.startswith("file:"):
        value = source[5:].strip()
        if not value:
            raise RowError("source 'file:' names no file")
        return "file", value, "file: prefix"
    if urlparse(source).scheme in ("http", "https"):
        if youtube_id_of(source):
            return "youtube", source, "YouTube URL"
        return "url", source, "http(s) URL"
    if YOUTUBE_ID_RE.match(source):
        return "youtube", source, BARE_ID_RULE
    return "file", source, "a local path (no prefix, not an 11-character id)"


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
    if e is not None and e <= 0:
        raise RowError(f"end={e} is not after the video's start")
    for name, v in (("start", s), ("end", e)):
        if v is not None and v > MAX_SECONDS:
            raise RowError(f"{name}={v:g} s is beyond any video ({MAX_SECONDS:g} s)")
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
    clip = _clip(line, yid, clip_id, yid, s, e, fx, fy, None, yid)
    return dataclasses.replace(clip, source_kind="youtube", source_rule="AVSpeech row (YouTube id)")


def parse_generic_row(row: dict[str, str], line: int) -> Clip:
    get = lambda k: (row.get(k) or "").strip()  # noqa: E731
    source = get("source")
    if not source:
        raise RowError("source is empty")
    kind, source, rule = classify_source(source)
    s, e = _times(get("start"), get("end"))
    fx, fy = _hint(get("x"), get("y"))
    split = get("split") or None
    if split is not None and split not in SPLITS:
        raise RowError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    yid = youtube_id_of(source) if kind == "youtube" else None
    clip_id = get("id")
    if clip_id:
        if not CLIP_ID_RE.match(clip_id):
            raise RowError(f"id={clip_id!r} may only use A-Z a-z 0-9 _ -")
        if len(clip_id) > MAX_ID_CHARS:
            raise RowError(f"id is {len(clip_id)} characters long; at most {MAX_ID_CHARS}")
    else:
        stem = yid or Path(urlparse(source).path).stem
        digest = hashlib.sha1(f"{source}|{s}|{e}".encode()).hexdigest()[:8]
        clip_id = f"{sanitize_id(stem)[:40]}-{digest}"
    identity = get("identity") or (yid or sanitize_id(Path(urlparse(source).path).stem))
    clip = _clip(line, source, clip_id, identity, s, e, fx, fy, split, yid)
    return dataclasses.replace(clip, gender=get("gender") or None, source_kind=kind, source_rule=rule)


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
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    header: list[str] | None = None
    first = True
    n_bare, first_bare = 0, None
    try:
        # bytes that are not UTF-8 become lone surrogates, so one bad byte spoils its row, not the file
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
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
                            known = ", ".join(GENERIC_COLUMNS)
                            raise InputError(f"manifest {path}: unknown column(s) {sorted(unknown)}; known: {known}")
                        if manifest is not None:
                            manifest.format = "generic"
                        continue
                    if manifest is not None:
                        manifest.format = "avspeech"
                item = _parse_row(row, line, header, optout, seen)
                if isinstance(item, Clip) and item.source_rule == BARE_ID_RULE:
                    n_bare, first_bare = n_bare + 1, first_bare or item
                yield item
    except (OSError, csv.Error) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise InputError(f"manifest {path}: {why}") from None
    if first_bare is not None and manifest is not None:
        manifest.warnings.append(
            f"{n_bare} source(s) are bare 11-character names (line {first_bare.line}: {first_bare.source!r}), used "
            "as a local file when one exists, else downloaded as YouTube ids; write yt:ID or file:PATH to say which"
        )


def _parse_row(row: list[str], line: int, header: list[str] | None, optout: set[str], seen) -> Clip | ClipStatus:
    """One manifest record → a Clip, or a rejected ClipStatus naming its line and why."""

    def reject(clip_id: str, reason: Reason, detail: str, identity: str | None = None) -> ClipStatus:
        return ClipStatus(id=clip_id, status="rejected", reason=reason, detail=f"line {line}: {detail}", line=line,
                          identity=identity)  # fmt: skip

    try:
        check_fields(row)
        if header is None:
            clip = parse_avspeech_row(row, line)
        else:
            if len(row) != len(header):
                raise RowError(f"{len(row)} columns but the header has {len(header)}")
            clip = parse_generic_row(dict(zip(header, row, strict=True)), line)
    except RowError as err:
        return reject(_fallback_id(row, header, line), Reason.BAD_ROW, str(err))
    if clip.clip_id in seen:
        detail = f"id {clip.clip_id!r} already used by an earlier row"
        return reject(clip.clip_id, Reason.DUPLICATE_ID, detail, clip.identity)
    seen.add(clip.clip_id)
    if is_opted_out(clip, optout):
        return reject(clip.clip_id, Reason.OPTED_OUT, "listed in the opt-out file", clip.identity)
    return clip


def check_fields(row: list[str]) -> None:
    """Raise RowError for a field that is not text a manifest can hold (not UTF-8, or absurdly long)."""
    for i, value in enumerate(row, 1):
        if len(value) > MAX_FIELD_CHARS:
            raise RowError(f"column {i} is {len(value)} characters long; at most {MAX_FIELD_CHARS}")
        if _SURROGATE.search(value):
            raise RowError(f"column {i} has bytes that are not UTF-8")


_SURROGATE = re.compile("[\udc80-\udcff]")


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
        if idx < len(row) and CLIP_ID_RE.match(row[idx].strip()) and len(row[idx].strip()) <= MAX_ID_CHARS:
            return row[idx].strip()
    return f"line-{line}"
