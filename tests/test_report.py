"""The run report: counts, escaping, bounded memory, and a real render in headless chromium."""

import io
import json
import re

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


def test_funnel_scales_histogram_axes_and_readable_details():
    report = RunReport()
    for i in range(3):
        report.add_status(ClipStatus(f"c{i}", "ok", windows_written=40, windows_total=50, identity="a", split="train"))
    detail = "no window kept: no_face 5"  # as the clip runner words it (never a Python dict)
    report.add_status(
        ClipStatus("c9", "rejected", "no_face", detail, windows_total=5, window_rejections={"no_face": 5})
    )
    for _ in range(40):
        report.add_sample({"identity": "a", "split": "train", "window_start": 0, "window_end": 1,
                           "speech_ratio": 0.95, "face_px": 150, "av_sync": 0.5}, _jpg())  # fmt: skip
    html = report.html({})
    bars = dict(re.findall(r"<td>([a-z ]+)</td><td class=n>\d+</td><td class=unit>\w+</td><td><div class='bar \w+' "
                           r"style='width:([0-9.]+)%'", html))  # fmt: skip
    # 4 clips and 155 windows: each group is scaled to its own first stage, so clips do not look like nothing
    assert float(bars["manifest rows"]) == float(bars["windows"]) == 100.0 and float(bars["decoded"]) == 100.0
    assert float(bars["written"]) == pytest.approx(100 * 120 / 155, abs=0.1)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 3
    for svg in svgs:  # a y-axis: its unit and ticks at 0, half and the top count
        assert ">windows</text>" in svg and ">0</text>" in svg and ">40</text>" in svg and ">20</text>" in svg
    assert "{'" not in html and "no window kept: no_face 5" in html


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(buf, "JPEG")
    return buf.getvalue()


def test_progress_prints_lines_with_an_eta_off_a_terminal(capsys):
    import time

    from pipeline.progress import Progress, eta_text

    assert eta_text(None) == "eta ?" and eta_text(75) == "eta 1m15s" and eta_text(3700) == "eta 1h01m"
    with Progress(4, "packing", "clips", every_s=0.0, bar=False) as p:
        assert p.eta() is None
        for _ in range(4):
            time.sleep(0.01)
            p.advance()
        assert p.eta() == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("packing: 1/4 clips (25%), eta 0m0") and lines[-1].startswith(
        "packing: 4/4 clips (100%)"
    )
