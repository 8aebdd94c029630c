"""The run report: counts, escaping, bounded memory, and a real render in headless chromium."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from flows.build import run_build
from pipeline.records import ClipStatus
from pipeline.report import RunReport
from tests.browser import chromium_page


def jpg(color=(200, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), color).save(buf, "JPEG")
    return buf.getvalue()


def meta(identity, ratio=0.9, face=130):
    return {"identity": identity, "split": "train", "window_start": 0.0, "window_end": 1.0,
            "speech_ratio": ratio, "face_px": face}  # fmt: skip


def test_funnel_follows_each_status_to_the_stage_it_reached():
    r = RunReport()
    r.add_status(ClipStatus("bad", "rejected", "bad_row"))
    r.add_status(ClipStatus("gone", "failed", "video_unavailable"))
    r.add_status(ClipStatus("broken", "rejected", "corrupt_media"))
    r.add_status(ClipStatus("quiet", "rejected", "no_speech", windows_total=4, window_rejections={"no_speech": 4}))
    r.add_status(
        ClipStatus("ok1", "ok", None, windows_written=5, identity="a", windows_total=8,
                   window_rejections={"no_speech": 2, "no_face": 1})
    )  # fmt: skip
    assert dict(r.funnel_rows()) == {
        "manifest rows": 5, "clips": 4, "resolved": 3, "decoded": 2,
        "windows": 12, "speech windows": 6, "clean audio": 6, "faces": 5, "good faces": 5, "same identity": 5,
        "in sync": 5, "written": 5,
    }  # fmt: skip
    assert r.reasons == {"bad_row": 1, "video_unavailable": 1, "corrupt_media": 1, "no_speech": 1}


def test_text_from_the_internet_is_escaped_and_mosaics_are_bounded():
    r = RunReport(max_mosaics=2, thumbs_per_identity=3)
    evil = "<script>alert(1)</script>"
    r.add_status(ClipStatus(evil, "rejected", "no_face", detail=evil))
    for identity in (evil, "b", "c"):
        for _ in range(5):
            r.add_sample(meta(identity), jpg())
    page = r.html({"samples": 15, "shards": {"train": 1}})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert len(r.thumbs) == 2 and all(len(t) == 3 for t in r.thumbs.values())
    assert page.count("data:image/jpeg;base64,") == 6


@pytest.mark.slow
def test_report_renders_in_chromium_with_mosaics(media, prefect_harness, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"source,id,identity\n{media.moving},m1,alice\n{media.stereo48k},s1,grace\n{media.coffee},c1,nobody\n"
    )
    out = tmp_path / "out"
    summary = run_build(manifest, out, workers=2)
    assert summary["funnel"]["written"] == summary["samples"] > 0
    report = out / "report.html"
    text = report.read_text()
    assert "src='http" not in text and "<link" not in text and "<script" not in text  # self-contained, offline
    rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    expected_thumbs = sum(min(12, r["windows_written"]) for r in rows)
    with chromium_page(1200, 1600) as page:
        page.goto(report.as_uri())
        assert page.title() == "voiceface build report"
        loaded = page.eval_on_selector_all(
            ".mosaic img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert loaded == expected_thumbs > 0
        assert page.locator(".mosaic h3").all_inner_texts() == ["alice", "grace"]
        assert "no_face" in page.inner_text("body")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 800 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # a page with photos, not blank
    assert json.loads((out / "summary.json").read_text())["funnel"]["written"] == summary["samples"]
