import shutil

import pytest

from pipeline.config import DownloadConfig
from pipeline.media import probe
from pipeline.reasons import ClipError
from pipeline.records import Clip
from pipeline.sources import classify_download_error, resolve_source
from tests.httpserver import RangeHandler

FAST = DownloadConfig(retries=2, backoff_s=0.01)


def clip(source, **kw):
    return Clip(kw.pop("clip_id", "c1"), source, "someone", 1, **kw)


def test_mirror_then_local_path(media, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(media.moving, mirror / "PmD-LzPS2rg.mp4")
    yt = Clip("PmD-LzPS2rg_1000", "PmD-LzPS2rg", "PmD-LzPS2rg", 1, youtube_id="PmD-LzPS2rg")
    src = resolve_source(yt, FAST, tmp_path / "dl", mirror=mirror)
    assert src.kind == "mirror" and src.offset == 0
    src = resolve_source(clip("moving.mp4"), FAST, tmp_path / "dl", base_dir=media.dir)
    assert src.kind == "local" and src.path == media.dir / "moving.mp4"


def test_missing_local_file_fails_file_not_found(tmp_path):
    with pytest.raises(ClipError) as err:
        resolve_source(clip("nowhere/video.mp4"), FAST, tmp_path / "dl", base_dir=tmp_path)
    assert (err.value.reason, err.value.status) == ("file_not_found", "failed")


def test_ytdlp_downloads_only_the_segment(http_media, tmp_path):
    c = clip(f"{http_media.url}/moving.mp4", start=2 * 16000, end=5 * 16000)
    src = resolve_source(c, FAST, tmp_path / "dl")
    assert src.kind == "download" and src.offset == 2 * 16000
    info = probe(src.path)
    assert abs(info.duration - 3.0) < 0.15 and info.has_audio and info.height <= 480


def test_http_404_is_video_unavailable_and_not_retried(http_media, tmp_path):
    sleeps = []
    with pytest.raises(ClipError) as err:
        resolve_source(clip(f"{http_media.url}/gone.mp4"), FAST, tmp_path / "dl", sleep=sleeps.append)
    assert (err.value.reason, err.value.status) == ("video_unavailable", "failed")
    assert sleeps == []


def test_429_is_rate_limited_and_retried_with_growing_backoff(http_media, tmp_path):
    RangeHandler.forced["/busy.mp4"] = 429
    sleeps, gate = [], []
    try:
        with pytest.raises(ClipError) as err:
            c = clip(f"{http_media.url}/busy.mp4")
            resolve_source(c, FAST, tmp_path / "dl", sleep=sleeps.append, gate=lambda: gate.append(1))
    finally:
        RangeHandler.forced.pop("/busy.mp4")
    assert err.value.reason == "rate_limited"
    assert len(gate) == 3  # every attempt waits on the rate limit
    assert len(sleeps) == 2 and 0.005 <= sleeps[0] <= 0.01 and 0.01 <= sleeps[1] <= 0.02


def test_dead_host_is_network_error_after_retries(tmp_path):
    sleeps = []
    with pytest.raises(ClipError) as err:
        resolve_source(clip("http://127.0.0.1:9/v.mp4"), FAST, tmp_path / "dl", sleep=sleeps.append)
    assert err.value.reason == "network_error" and len(sleeps) == 2


@pytest.mark.parametrize(
    "message, reason",
    [
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "private_video"),
        (
            "ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader",
            "video_unavailable",
        ),
        ("ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies", "bot_check"),
        ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "rate_limited"),
        (
            "ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate",
            "age_restricted",
        ),
        ("ERROR: Unable to download webpage: <urlopen error [Errno -3] Temporary failure>", "network_error"),
        ("ERROR: Unsupported URL: ftp://x", "unsupported_url"),
        ("ERROR: something new", "download_error"),
    ],
)
def test_classify_download_error(message, reason):
    assert classify_download_error(message) == reason


def test_the_demo_manifest_without_mirror_or_media_never_downloads(tmp_path):
    """Without a mirror its sources are files relative to the manifest: missing ones are file_not_found, with
    the rule that applied in the detail, and nothing is fetched (they used to be taken for YouTube ids)."""
    from flows.cli import DEMO_MANIFEST
    from pipeline.config import DownloadConfig
    from pipeline.manifest import read_manifest

    downloads = tmp_path / "dl"
    for clip in read_manifest(DEMO_MANIFEST).clips:
        with pytest.raises(ClipError) as err:
            resolve_source(clip, DownloadConfig(retries=0), downloads, None, tmp_path / "nowhere")
        assert err.value.reason == "file_not_found"
        assert err.value.detail.endswith("(source read as file: prefix)")
    assert not downloads.exists()


def test_the_demo_manifest_resolves_its_files_relative_to_itself(media, tmp_path):
    from pipeline.config import DownloadConfig
    from pipeline.manifest import read_manifest

    (tmp_path / "manifests").mkdir()
    (tmp_path / "out" / "demo-media").mkdir(parents=True)
    shutil.copy(media.moving, tmp_path / "out" / "demo-media" / "hopper-talk.mp4")
    manifest = tmp_path / "manifests" / "demo.csv"
    manifest.write_text("id,source\nhopper-talk,file:../out/demo-media/hopper-talk.mp4\n")
    (clip,) = read_manifest(manifest).clips
    src = resolve_source(clip, DownloadConfig(retries=0), tmp_path / "dl", None, manifest.parent)
    assert src.kind == "local" and src.path.name == "hopper-talk.mp4"
