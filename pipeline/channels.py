"""Channel lists (Wav2Pix-style `name,gender,channel_url`) expanded into manifest rows of their newest
videos with yt-dlp's flat playlist extraction. A download archive (yt-dlp's `<extractor> <id>` format) keeps
the expansion incremental: a video already listed is never added twice."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .manifest import sanitize_id, youtube_id_of
from .reasons import ClipError
from .sources import classify_download_error

CHANNEL_COLUMNS = ("name", "gender", "channel_url")


@dataclass(frozen=True)
class Channel:
    name: str
    gender: str
    url: str
    line: int


@dataclass(frozen=True)
class Video:
    archive_key: str  # "<extractor> <id>", as yt-dlp's download archive writes it
    url: str
    video_id: str
    title: str


def read_channels(path: str | Path) -> tuple[list[Channel], list[str]]:
    """(channels, problems): a bad row is reported with its line and skipped."""
    channels, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = set(CHANNEL_COLUMNS) - {c.strip().lower() for c in reader.fieldnames or []}
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected {', '.join(CHANNEL_COLUMNS)}")
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            line = reader.line_num
            if not row["name"] or not row["channel_url"].startswith(("http://", "https://")):
                problems.append(f"line {line}: needs a name and an http(s) channel_url")
                continue
            channels.append(Channel(row["name"], row["gender"], row["channel_url"], line))
    return channels, problems


def read_archive(path: str | Path | None) -> set[str]:
    if not path or not Path(path).exists():
        return set()
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def list_newest(channel_url: str, limit: int, socket_timeout_s: float = 30.0) -> list[Video]:
    """The channel's newest `limit` videos, without downloading them (yt-dlp flat playlist extraction)."""
    import yt_dlp
    from yt_dlp.utils import unsmuggle_url

    opts = {
        "extract_flat": "in_playlist",
        "playlistend": limit,
        "skip_download": True,
        "quiet": True,
        "no_warnings": True,
        "socket_timeout": socket_timeout_s,
    }
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(channel_url, download=False)
    except yt_dlp.utils.DownloadError as err:
        raise ClipError(classify_download_error(str(err)), str(err)[:300], status="failed") from None
    entries = info.get("entries") or [] if info.get("_type") == "playlist" else [info]
    videos = []
    for e in list(entries)[:limit]:
        url, smuggled = unsmuggle_url(e.get("url") or e.get("webpage_url") or "", {})
        if not url:
            continue
        vid = e.get("id") or smuggled.get("force_videoid") or youtube_id_of(url) or sanitize_id(Path(url).stem)
        extractor = (e.get("ie_key") or ("youtube" if youtube_id_of(url) else "generic")).lower()
        videos.append(Video(f"{extractor} {vid}", url, str(vid), e.get("title") or ""))
    return videos


def expand_channels(
    channels_csv: str | Path, manifest_out: str | Path, archive: str | Path, per_channel: int = 20,
    segment_s: float | None = None,
) -> tuple[int, list[str]]:  # fmt: skip
    """Append rows for each channel's newest videos not yet in the archive to `manifest_out` (a generic manifest,
    created with its header if missing), then record them in the archive. Returns (rows added, problems)."""
    channels, problems = read_channels(channels_csv)
    known = read_archive(archive)
    rows, keys = [], []
    for ch in channels:
        try:
            videos = list_newest(ch.url, per_channel)
        except ClipError as err:
            problems.append(f"line {ch.line}: {ch.name}: {err.reason}: {err.detail}")
            continue
        for v in videos:
            if v.archive_key in known:
                continue
            known.add(v.archive_key)
            keys.append(v.archive_key)
            clip_id = sanitize_id(f"{ch.name}-{v.video_id}")[:80]
            end = "" if segment_s is None else f"{segment_s:g}"
            rows.append([v.url, clip_id, ch.name, ch.gender, "0" if end else "", end])
    manifest_out, archive = Path(manifest_out), Path(archive)
    manifest_out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not manifest_out.exists()
    with open(manifest_out, "a", newline="") as f:
        w = csv.writer(f)
        if new_file:
            w.writerow(["source", "id", "identity", "gender", "start", "end"])
        w.writerows(rows)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive, "a") as f:  # after the manifest: a crash in between re-lists, never loses, a video
        f.writelines(k + "\n" for k in keys)
    return len(rows), problems
