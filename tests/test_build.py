"""The build flow end to end (Prefect, yt-dlp over HTTP, mirror, local files, bad rows), read back with
webdataset itself; then a re-run that does no media work and writes the same bytes."""

import hashlib
import io
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.build import run_build
from tests.conftest import best_lag, read_wav

pytestmark = pytest.mark.slow

REQUIRED = {"clip_id", "identity", "source", "split", "window_start", "window_end", "frame_time", "bbox",
            "landmarks5", "det_score", "speech_ratio", "pipeline_version"}  # fmt: skip


def read_shards(out: Path) -> list[dict]:
    import webdataset as wds

    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def built(media, http_media, prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    (root / "clips").mkdir()
    shutil.copy(media.moving, root / "clips" / "moving.mp4")
    manifest = root / "manifest.csv"
    manifest.write_text(
        "source,id,identity,start,end,x,y\n"
        "clips/moving.mp4,local1,alice,,,,\n"  # a local path, relative to the manifest
        f"{http_media.url}/two_faces.mp4,web1,grace,1,5,0.75,0.5\n"  # yt-dlp, only [1, 5] s, speaker on the right
        f"{http_media.url}/stereo48k.mp4,web2,grace,,,,\n"
        f"{media.coffee},noface,carol,,,,\n"
        f"{media.silence},quiet,dave,,,,\n"
        f"{media.truncated},broken,erin,,,,\n"
        f"{media.no_audio},mute,frank,,,,\n"
        f"{http_media.url}/gone.mp4,gone,gus,,,,\n"  # HTTP 404
        "clips/nothing.mp4,missing,hal,,,,\n"
        "clips/moving.mp4,bad1,ivy,abc,2,,\n"  # bad number
        "clips/moving.mp4,local1,alice,,,,\n"  # duplicate id
    )
    out = root / "out"
    summary = run_build(manifest, out, config=None, workers=2)
    return out, summary


def test_one_status_row_per_manifest_row_with_reasons(built):
    out, summary = built
    rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert len(rows) == 11 == summary["manifest_rows"]
    got = {(r["id"], r["line"]): (r["status"], r["reason"]) for r in rows}
    assert got == {
        ("local1", 2): ("ok", None),
        ("web1", 3): ("ok", None),
        ("web2", 4): ("ok", None),
        ("noface", 5): ("rejected", "no_face"),
        ("quiet", 6): ("rejected", "no_speech"),
        ("broken", 7): ("rejected", "corrupt_media"),
        ("mute", 8): ("rejected", "no_audio"),
        ("gone", 9): ("failed", "video_unavailable"),
        ("missing", 10): ("failed", "file_not_found"),
        ("bad1", 11): ("rejected", "bad_row"),
        ("local1", 12): ("rejected", "duplicate_id"),
    }
    for r in rows:
        assert set(r) >= {"id", "status", "reason", "detail", "windows_written"}
        assert (r["windows_written"] > 0) == (r["status"] == "ok")


def test_shards_read_back_with_webdataset(built):
    out, summary = built
    samples = read_shards(out)
    assert len(samples) == summary["samples"] > 10
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    assert {k.rsplit("-", 1)[0] for k in keys} == {"local1", "web1", "web2"}  # nothing from rejected clips
    for s in samples:
        assert "." not in s["__key__"]
        with wave.open(io.BytesIO(s["wav"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (
                16000,
                1,
                2,
                16000,
            )
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.mode == "RGB" and img.size == (224, 224)
        rgb = np.asarray(img)[80:150, 80:150].reshape(-1, 3).mean(0)
        assert rgb[0] > rgb[2]  # skin: more red than blue, so channels are RGB
        meta = json.loads(s["json"])
        assert REQUIRED <= set(meta)
        assert s["__key__"] == f"{meta['clip_id']}-{meta['window_index']:05d}"
        assert np.load(io.BytesIO(s["dlib.npy"])).dtype == np.float32
    web1 = [json.loads(s["json"]) for s in samples if s["__key__"].startswith("web1")]
    # downloaded segment [1, 5] s: times are on the source video's timeline; the hint chose the right face
    assert [m["window_start"] for m in web1] == [1.0, 2.0, 3.0, 4.0]
    assert all(m["bbox"][0] > 320 and m["speaker_choice"] in ("hint", "track") for m in web1)


def test_downloaded_segment_audio_matches_the_source_at_window_start(built, media):
    out, _ = built
    source = read_wav(media.speech16k).astype(np.float64)
    web1 = [s for s in read_shards(out) if s["__key__"].startswith("web1")]
    for s in web1:
        start = round(json.loads(s["json"])["window_start"] * 16000)
        assert abs(best_lag(read_wav(s["wav"]).astype(np.float64), source, start) - start) <= 320  # ±20 ms


def test_splits_are_identity_disjoint(built):
    out, _ = built
    split_of: dict[str, set[str]] = {}
    for tar in (out / "shards").glob("*.tar"):
        split = tar.name.split("-")[0]
        assert split in ("train", "val", "test")
    for s in read_shards(out):
        meta = json.loads(s["json"])
        split_of.setdefault(meta["identity"], set()).add(meta["split"])
    assert all(len(v) == 1 for v in split_of.values())


def test_rerun_does_no_media_work_and_writes_identical_shards(built):
    out, _ = built
    before = digest(out)
    manifest = out.parent / "manifest.csv"
    summary = run_build(manifest, out, workers=2)
    # only the missing local file is looked for again (it may have been added); a 404 stands
    assert (summary["clips_cached"], summary["clips_redone"], summary["clips_new"]) == (8, 1, 0)
    assert digest(out) == before


def test_avspeech_row_through_a_mirror(media, prefect_harness, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(media.two_faces, mirror / "PmD-LzPS2rg.mp4")
    manifest = tmp_path / "avspeech.csv"
    manifest.write_text("PmD-LzPS2rg,1.0,5.0,0.25,0.5\nPmD-LzPS2rg,2.5,1.0,0.25,0.5\n")
    out = tmp_path / "out"
    run_build(manifest, out, mirror=mirror, workers=1)
    rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"], r["reason"]) for r in rows] == [
        ("PmD-LzPS2rg_1000", "ok", None),
        ("line-2", "rejected", "bad_row"),
    ]
    metas = [json.loads(s["json"]) for s in read_shards(out)]
    assert [m["window_start"] for m in metas] == [1.0, 2.0, 3.0, 4.0]
    assert all(m["identity"] == "PmD-LzPS2rg" and m["bbox"][2] < 320 for m in metas)  # the left face, as hinted
    assert all(abs(m["frame_time"] - m["window_start"] - 0.5) <= 0.04 + 1e-6 for m in metas)
