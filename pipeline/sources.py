"""Resolve a clip's source to a local video file: MIRROR dir, then a local path, then yt-dlp.

yt-dlp fetches only the requested segment. Its failures become reason codes; transient ones are
retried with exponential backoff and jitter, permanent ones never.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .config import DownloadConfig
from .manifest import sanitize_id
from .reasons import TRANSIENT, ClipError, Reason
from .records import Clip, samples_to_seconds

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi", ".flv", ".ts")


@dataclass(frozen=True)
class Source:
    path: Path
    offset: int  # source-timeline sample at which this file's t=0 lies (segment downloads start late)
    kind: str  # mirror | local | download


def find_in_mirror(clip: Clip, mirror: Path) -> Path | None:
    """`<id>.<ext>` in the mirror, trying the YouTube id, the clip id and the source's stem."""
    names = [clip.youtube_id, clip.clip_id, sanitize_id(Path(urlparse(clip.source).path).stem)]
    for name in filter(None, names):
        for ext in VIDEO_EXTS:
            p = mirror / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def local_path(source: str, base_dir: Path | None) -> Path | None:
    """The local file a source names, relative paths tried against the manifest's dir, then the cwd."""
    if is_url(source):
        return None
    if source.startswith("file://"):
        source = urlparse(source).path
    p = Path(source).expanduser()
    candidates = [p] if p.is_absolute() else [base_dir / p, p] if base_dir else [p]
    for c in candidates:
        if c.is_file():
            return c
    return None


def resolve_source(
    clip: Clip,
    cfg: DownloadConfig,
    download_dir: Path,
    mirror: Path | None = None,
    base_dir: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    gate: Callable[[], None] | None = None,
) -> Source:
    """Find or fetch the clip's video. Raises ClipError with a reason code when it cannot.

    Downloads land in `download_dir/<clip_id>/` with a record of what was fetched, and are reused when the
    same segment is asked for again. `gate` is called before every download attempt (a rate limiter)."""
    if mirror is not None and (p := find_in_mirror(clip, mirror)):
        return Source(p, 0, "mirror")
    rule = f" (source read as {clip.source_rule})" if clip.source_rule else ""
    if clip.source_kind == "file":
        if p := local_path(clip.source, base_dir):
            return Source(p, 0, "local")
        raise ClipError(Reason.FILE_NOT_FOUND, f"no such file: {clip.source}{rule}", status="failed")
    if clip.source_kind in (None, "youtube") and (p := local_path(clip.source, base_dir)):
        return Source(p, 0, "local")  # unclassified, or a bare name that is also a local file
    try:
        return _fetch(clip, cfg, download_dir, sleep, gate)
    except ClipError as err:
        if rule and err.reason != Reason.FILE_NOT_FOUND:
            err.detail = f"{err.detail}{rule}"
        raise


def _fetch(clip: Clip, cfg: DownloadConfig, download_dir: Path, sleep, gate) -> Source:
    """The clip's segment from YouTube or its URL, from an earlier download when it is the same request."""
    if clip.youtube_id:
        url = f"https://www.youtube.com/watch?v={clip.youtube_id}"
    elif is_url(clip.source):
        url = clip.source
    else:
        raise ClipError(Reason.FILE_NOT_FOUND, f"no such file: {clip.source}", status="failed")
    if (cached := cached_download(clip, url, cfg, download_dir)) is not None:
        return cached
    for attempt in range(cfg.retries + 1):
        try:
            if gate is not None:
                gate()
            return download_segment(clip, url, cfg, download_dir)
        except ClipError as err:
            if err.reason not in TRANSIENT or attempt == cfg.retries:
                raise
            # exponential backoff with full jitter, so parallel workers do not retry in lockstep
            sleep(random.uniform(0.5, 1.0) * cfg.backoff_s * 2**attempt)
    raise AssertionError("unreachable")


# (pattern in yt-dlp's message, reason) — first match wins, so the specific ones come first
_ERROR_PATTERNS: list[tuple[str, Reason]] = [
    (r"private video", Reason.PRIVATE_VIDEO),
    (r"not a bot|confirm you.re not a robot|captcha", Reason.BOT_CHECK),
    (r"HTTP Error 429|Too Many Requests|rate.?limit", Reason.RATE_LIMITED),
    (r"age.restricted|confirm your age|inappropriate for some users", Reason.AGE_RESTRICTED),
    (
        r"video unavailable|is not available|has been removed|no longer available|HTTP Error 40[34]|"
        r"HTTP Error 410|does not exist|account .* terminated|copyright",
        Reason.VIDEO_UNAVAILABLE,
    ),
    (r"Unsupported URL", Reason.UNSUPPORTED_URL),
    (
        r"timed out|Connection refused|Connection reset|Name or service not known|Temporary failure|"
        r"Unable to download|URLError|Errno|HTTP Error 5\d\d|IncompleteRead|Remote end closed",
        Reason.NETWORK_ERROR,
    ),
]


def classify_download_error(message: str) -> Reason:
    for pattern, reason in _ERROR_PATTERNS:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    return Reason.DOWNLOAD_ERROR


def _download_key(clip: Clip, url: str, cfg: DownloadConfig) -> str:
    return json.dumps([url, clip.start, clip.end, cfg.max_height])


def cached_download(clip: Clip, url: str, cfg: DownloadConfig, download_dir: Path) -> Source | None:
    """The segment an earlier run downloaded for this clip, if it was the same request."""
    record = download_dir / clip.clip_id / "source.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    path = record.parent / data["file"]
    if data["key"] != _download_key(clip, url, cfg) or not path.is_file():
        return None
    return Source(path, data["offset"], "download")


def download_segment(clip: Clip, url: str, cfg: DownloadConfig, download_dir: Path) -> Source:
    """Download only [start, end] of `url` with yt-dlp, in a format of at most max_height."""
    import yt_dlp
    from yt_dlp.utils import download_range_func

    out_dir = download_dir / clip.clip_id
    if out_dir.exists():  # leftovers of an interrupted attempt
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    h = cfg.max_height
    opts = {
        # a muxed small format first (YouTube's 360p mp4), else the smallest pair that fits
        "format": f"b[height<=?{h}][acodec!=none][vcodec!=none]/bv*[height<=?{h}]+ba/b",
        "format_sort": [f"res:{h}", "+size"],
        "outtmpl": str(out_dir / "video.%(ext)s"),
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "retries": 0,  # we retry, with our own backoff, only what is transient
        "fragment_retries": 0,
        "socket_timeout": cfg.socket_timeout_s,
        "merge_output_format": "mp4",
        "logger": _QuietLogger(),
    }
    offset = 0
    if clip.start is not None or clip.end is not None:
        start = samples_to_seconds(clip.start or 0)
        end = samples_to_seconds(clip.end) if clip.end is not None else float("inf")
        opts["download_ranges"] = download_range_func(None, [(start, end)])
        opts["force_keyframes_at_cuts"] = True  # cut exactly, so the file's t=0 is `start`
        offset = clip.start or 0
    elif cfg.download_archive:
        opts["download_archive"] = cfg.download_archive
    if cfg.cookies:
        opts["cookiefile"] = cfg.cookies
    if cfg.sleep_interval_s > 0:
        opts["sleep_interval"] = cfg.sleep_interval_s
        opts["max_sleep_interval"] = max(cfg.max_sleep_interval_s, cfg.sleep_interval_s)
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.download([url])
    except yt_dlp.utils.DownloadError as err:
        msg = str(err)
        reason = classify_download_error(msg)
        raise ClipError(reason, _short(msg), status="failed") from None
    files = [p for p in out_dir.iterdir() if p.suffix in VIDEO_EXTS and p.stat().st_size > 0]
    if not files:
        raise ClipError(Reason.DOWNLOAD_ERROR, f"yt-dlp wrote no video file for {url}", status="failed")
    record = {"key": _download_key(clip, url, cfg), "file": files[0].name, "offset": offset}
    (out_dir / "source.json").write_text(json.dumps(record))  # written last: marks the download complete
    return Source(files[0], offset, "download")


def _short(msg: str, limit: int = 300) -> str:
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg).replace("ERROR: ", "").strip()
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class _QuietLogger:
    """yt-dlp logger that keeps errors for the exception and drops chatter."""

    def debug(self, msg):
        pass

    info = warning = debug

    def error(self, msg):
        pass
