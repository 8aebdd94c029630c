"""What a review card shows and plays: read from the clip tars by offset, or rendered once and cached.

Every file served lies inside OUT: paths are resolved and checked, whatever the database says. The source
frame (with the face's box) and the 4 s context audio are made on a card's first request and kept in
OUT/review/media/, so a queue of 10,000 windows costs nothing up front.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import SAMPLE_RATE
from ..speech import wav_bytes
from .db import ReviewDB

KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")  # sample keys: clip ids are [A-Za-z0-9_-], then -NNNNN
CONTEXT_S = 4.0
FRAME_MAX_WIDTH = 640


class StaleIndex(Exception):
    """The clip tar changed since it was indexed: the offsets no longer hold (re-run the queue)."""


def inside(out: Path, rel: str | Path) -> Path:
    """`out/rel` resolved, if it lies inside OUT (symlinks followed); PermissionError otherwise."""
    root = Path(out).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise PermissionError(f"{rel} is outside OUT")
    return path


def read_member(out: Path, item: dict, ext: str) -> bytes:
    """A sample member's bytes, by its offset in the clip tar: no tar parsing per request."""
    tar = inside(out, item["tar"])
    st = tar.stat()
    if (st.st_size, st.st_mtime_ns) != (item["tar_size"], item["tar_mtime_ns"]):
        raise StaleIndex(f"{item['tar']} changed since it was queued")
    offset, size = json.loads(item["members"])[ext]
    with open(tar, "rb") as f:
        f.seek(offset)
        return f.read(size)


def cached(out: Path, kind: str, key: str, ext: str, make: Callable[[], bytes | None]) -> Path | None:
    """OUT/review/media/<kind>/<key>.<ext>, made by `make` on first use (None: cannot be made)."""
    if not KEY_RE.fullmatch(key) or not KEY_RE.fullmatch(kind):
        raise PermissionError(f"bad media name {kind}/{key}")
    path = inside(out, Path("review") / "media" / kind / f"{key}.{ext}")
    if path.exists():
        return path
    data = make()
    if data is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name: two requests for the same card may render it at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def frame_jpeg(source: Path, time_s: float, bbox: list[float], max_width: int = FRAME_MAX_WIDTH) -> bytes | None:
    """The source frame at `time_s` with the face's box drawn, as a JPEG at most `max_width` wide."""
    from PIL import Image, ImageDraw

    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{max(0.0, time_s):.6f}", "-i", str(source)]
    cmd += ["-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    if r.returncode != 0 or not r.stdout:
        return None
    img = Image.open(io.BytesIO(r.stdout)).convert("RGB")
    scale = min(1.0, max_width / img.width)
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    l, t, rt, b = (v * scale for v in bbox)
    ImageDraw.Draw(img).rectangle((l, t, rt, b), outline=(0, 230, 90), width=3)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def context_from_source(source: Path, start_s: float, end_s: float, seconds: float = CONTEXT_S) -> bytes | None:
    """`seconds` of the source's audio centred on the window [start_s, end_s] (source timeline)."""
    from ..media import decode_audio
    from ..reasons import ClipError

    lo = max(0.0, (start_s + end_s) / 2 - seconds / 2)
    try:
        audio = decode_audio(source, lo, seconds)
    except ClipError:
        return None
    return wav_bytes(audio) if len(audio) else None


def context_from_windows(neighbours: dict[int, bytes], index: int, seconds: float = CONTEXT_S) -> bytes:
    """About `seconds` of audio from the clip's own windows around `index` (one before, the rest after);
    windows that were not kept are silence."""
    window = len(wav_samples(neighbours[index]))
    n = max(1, round(seconds * SAMPLE_RATE / window))
    parts = []
    for i in range(index - (n - 1) // 2, index - (n - 1) // 2 + n):
        parts.append(wav_samples(neighbours[i]) if i in neighbours else np.zeros(window, dtype="<i2"))
    return wav_bytes(np.concatenate(parts))


# kind -> (file extension, mime type)
MEDIA = {
    "crop": ("jpg", "image/jpeg"),
    "frame": ("jpg", "image/jpeg"),
    "wav": ("wav", "audio/wav"),
    "context": ("wav", "audio/wav"),
}


def card_media(out: Path, db: ReviewDB, key: str, kind: str) -> bytes | Path | None:
    """The bytes (crop, 1 s audio) or cached file (source frame, context audio) of a card; None if there is none.

    PermissionError for names that are not sample keys or paths outside OUT; StaleIndex for a changed tar.
    """
    if kind not in MEDIA or not KEY_RE.fullmatch(key):
        raise PermissionError(f"bad media request {kind}/{key}")
    item = db.item(key)
    if item is None:
        return None
    if kind == "crop":
        return read_member(out, item, "jpg")
    if kind == "wav":
        return read_member(out, item, "wav")
    meta = json.loads(item["meta"])
    source = Path(item["source_path"]) if item["source_path"] else None
    if source is not None and not source.is_file():
        source = None
    if kind == "frame":
        if source is None or "frame_time" not in meta or "bbox" not in meta:
            return None
        return cached(out, "frame", key, "jpg", lambda: frame_jpeg(source, meta["frame_time"], meta["bbox"]))

    def context() -> bytes | None:
        if source is not None and (wav := context_from_source(source, meta["window_start"], meta["window_end"])):
            return wav
        index = item["window_index"]
        neighbours = db.window_members(item["clip_id"], index - 3, index + 3, rescue=bool(item.get("rescue")))
        tar = inside(out, item["tar"])
        with open(tar, "rb") as f:
            data = {}
            for i, members in neighbours.items():
                f.seek(members["wav"][0])
                data[i] = f.read(members["wav"][1])
        return context_from_windows(data, index)

    read_member(out, item, "json")  # raises StaleIndex before neighbours' offsets are trusted
    return cached(out, "context", key, "wav", context)
