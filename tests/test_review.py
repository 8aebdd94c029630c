"""The review queue: checks and thresholds, manual queueing, the append-only history with concurrent reviewers,
publishing that honours decisions, the page's safety (path traversal, escaping, token, host), a 10,000-item
queue, the keyboard in a real Chromium, and the curate flow paused until the batch is marked done."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.build import finish_build, plan_build
from pipeline.clip import run_clip
from pipeline.config import Config, ReviewConfig
from pipeline.review.publish import publish
from pipeline.review.queue import (
    clips_in_out,
    db_path,
    fill_queue,
    medoid_distances,
    open_db,
    prepare_review,
    queue_out,
    queue_reasons,
)
from pipeline.tars import read_samples

XSS_ID = "<script>alert(1)</script>"
XSS_SOURCE = "<img src=x onerror=alert(1)>"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def build(manifest: Path, out: Path, mirror: Path | None = None, cfg: Config | None = None) -> dict:
    """A build without Prefect: plan, every clip, finish (as the flow does)."""
    plan = plan_build(manifest, out, cfg or Config(), mirror=mirror)
    for c in plan.todo:
        run_clip(c, plan.ctx)
    return finish_build(plan, prepare_review)


def shard_keys(out: Path) -> list[str]:
    import webdataset as wds

    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)] if urls else []


def all_keys(out: Path) -> list[str]:
    return [s["__key__"] for t in sorted((out / ".work" / "clips").glob("*.tar")) for s in read_samples(t)]


def rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "clips.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def built(media, tmp_path_factory) -> Path:
    """Four clips: alice; grace (two clips of Grace Hopper and one of the astronaut mislabelled as grace, whose
    windows are identity outliers); and a clip whose identity and source are HTML."""
    root = tmp_path_factory.mktemp("review")
    for video in (media.moving, media.two_faces, media.stereo48k):
        shutil.copy(video, root / video.name)
    mirror = root / "mirror"
    mirror.mkdir()
    shutil.copy(media.stereo48k, mirror / "xss.mp4")
    manifest = root / "manifest.csv"
    manifest.write_text(
        "source,id,identity,start,end,x,y\n"
        "moving.mp4,alice1,alice,,,,\n"
        "two_faces.mp4,grace1,grace,,,0.75,0.5\n"
        "stereo48k.mp4,grace2,grace,,,,\n"
        "moving.mp4,odd1,grace,0,4,,\n"
        f"{XSS_SOURCE},xss,{XSS_ID},0,3,,\n"
    )
    out = root / "out"
    build(manifest, out, mirror=mirror)
    return out


@pytest.fixture
def out(built, tmp_path) -> Path:
    """A private copy of the built OUT, for tests that decide or publish."""
    copy = tmp_path / "out"
    shutil.copytree(built, copy)
    return copy


def client(out: Path, **kw):
    from fastapi.testclient import TestClient

    from flows.review_app import create_app

    return TestClient(create_app(out, **kw), base_url="http://127.0.0.1:8765")


# --- the queue --------------------------------------------------------------------------------------------------


def test_queue_reasons_follow_the_thresholds():
    cfg = ReviewConfig()
    clean = {"det_score": 1.2, "face_px": 150, "sharpness": 300.0, "speech_ratio": 0.95, "identity_distance": 0.1}
    assert queue_reasons(clean, cfg) == []
    assert queue_reasons({**clean, "det_score": 0.1}, cfg) == ["low_face_score"]
    assert queue_reasons({**clean, "face_px": 70}, cfg) == ["small_face"]
    assert queue_reasons({**clean, "sharpness": 5.0}, cfg) == ["blurry"]
    assert queue_reasons({**clean, "speech_ratio": 0.55}, cfg) == ["low_speech_ratio"]
    assert queue_reasons({**clean, "identity_distance": 0.7}, cfg) == ["identity_outlier"]
    assert queue_reasons({}, cfg) == []  # a metric that is absent never flags a window
    strict = dataclasses.replace(cfg, min_face_px=200, min_speech_ratio=0.99)
    assert queue_reasons(clean, strict) == ["small_face", "low_speech_ratio"]


def sharpness(jpg: bytes) -> float:
    """The filters' one definition of sharpness (pipeline/quality.py), on a decoded crop."""
    from pipeline.quality import grey
    from pipeline.quality import sharpness as measure

    return measure(grey(np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))))


def test_sharpness_drops_with_blur_and_medoid_keeps_the_majority(built):
    sample = next(read_samples(built / ".work" / "clips" / "grace2.tar"))
    # the queue reads the build's own measure from the sample json; it never measures again
    item = open_db(built).item(sample["__key__"])
    assert json.loads(item["metrics"])["sharpness"] == json.loads(sample["json"])["sharpness"]
    img = Image.open(io.BytesIO(sample["jpg"]))
    blurred = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(3)).save(blurred, "JPEG")
    assert sharpness(sample["jpg"]) > ReviewConfig().min_sharpness > sharpness(blurred.getvalue())
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 128), rng.normal(0, 1, 128)
    vecs = np.stack([a + rng.normal(0, 0.01, 128) for _ in range(7)] + [b + rng.normal(0, 0.01, 128) for _ in range(3)])
    d = medoid_distances(vecs)
    assert d[:7].max() < 0.5 and d[7:].min() > 10


def test_build_queues_the_borderline_windows_and_holds_them_back(built):
    db = open_db(built)
    assert db.journal_mode() == "wal"
    cfg = ReviewConfig()
    with sqlite3.connect(db_path(built)) as conn:
        items = {k: (json.loads(r), json.loads(m), q)
                 for k, r, m, q in conn.execute("SELECT key, reasons, metrics, queued FROM items")}  # fmt: skip
    assert set(items) == set(all_keys(built))  # every window is indexed
    for reasons, metrics, queued in items.values():
        assert reasons == queue_reasons(metrics, cfg) and queued == bool(reasons)
        assert {"det_score", "face_px", "speech_ratio", "sharpness"} <= set(metrics)
    outliers = {k for k, (r, _, _) in items.items() if "identity_outlier" in r}
    assert outliers == {k for k in items if k.startswith("odd1-")} and len(outliers) == 4
    assert all("identity_distance" not in m for k, (_, m, _) in items.items() if k.startswith("xss-"))  # < 5
    queued = {k for k, (_, _, q) in items.items() if q}
    assert set(shard_keys(built)) == set(items) - queued  # queued and undecided: not in the shards by default
    r = rows(built)
    for clip in ("alice1", "grace1", "grace2", "odd1", "xss"):
        in_shards = sum(k.startswith(clip + "-") for k in shard_keys(built))
        held = sum(k.startswith(clip + "-") for k in queued)
        assert r[clip]["windows_written"] == in_shards
        assert r[clip]["review"] == {
            "accepted": 0,
            "rejected": 0,
            "unreviewed_excluded": held,
            "unreviewed_included": 0,
        }
    assert r["odd1"]["status"] == "rejected" and r["odd1"]["reason"] == "review_pending"
    summary = json.loads((built / "summary.json").read_text())
    assert summary["review"]["queued"] == len(queued) == summary["review"]["unreviewed_excluded"]
    assert summary["samples"] == len(items) - len(queued)


def test_refill_rescans_only_changed_clips_and_keeps_requests(out):
    _, clips = clips_in_out(out)
    db = open_db(out)
    db.request("alice", clips=["alice1"])
    before = {c.clip_id: c for c in db.clips().values()}
    stats = fill_queue(out, clips, ReviewConfig())
    assert stats["reasons"]["requested"] == sum(k.startswith("alice1-") for k in all_keys(out))
    assert db.clips() == before  # nothing rescanned: same tars, same rows
    # a looser threshold empties the automatic reasons but not what a reviewer asked for
    fill_queue(out, clips, dataclasses.replace(ReviewConfig(), max_identity_distance=9, min_speech_ratio=0))
    progress = db.progress()
    assert progress["queued"] == sum(k.startswith("alice1-") for k in all_keys(out))


def test_manual_queue_by_clip_and_identity(out):
    cfg = ReviewConfig(min_speech_ratio=0.0, max_identity_distance=9.0)  # nothing borderline
    stats = queue_out(out, cfg)
    assert stats["progress"]["queued"] == 0
    stats = queue_out(out, cfg, clips=["grace2"], identities=[XSS_ID], reviewer="alice")
    keys = all_keys(out)
    want = {k for k in keys if k.startswith(("grace2-", "xss-"))}
    assert stats["requested"] == len(want) == stats["progress"]["queued"]
    _, _, queued = open_db(out).outcome_sets()
    assert queued == want
    assert open_db(out).actions()[-1]["target"] == f"clip:grace2 identity:{XSS_ID}"
    with pytest.raises(ValueError, match="nobody"):
        queue_out(out, cfg, identities=["nobody"])


# --- decisions --------------------------------------------------------------------------------------------------


def test_history_is_append_only_and_undo_appends(out):
    db = open_db(out)
    key = all_keys(out)[0]
    db.decide([key], "accept", "alice")
    db.decide([key], "reject", "alice")
    assert db.states([key])[key]["decision"] == "reject"
    action, keys = db.undo("alice")
    assert keys == [key] and action["decision"] == "reject"
    assert db.states([key])[key]["decision"] == "accept"  # the reject is undone: the accept stands again
    db.undo("alice")
    assert db.states([key]) == {}
    assert db.undo("alice") == (None, [])
    assert [d["decision"] for d in db.decisions()] == ["accept", "reject", "undo", "undo"]
    with sqlite3.connect(db_path(out)) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE decisions SET decision = 'accept'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM decisions")
    with pytest.raises(KeyError):
        db.decide(["no-such-key-00000"], "accept", "alice")


def test_two_concurrent_reviewers_keep_both_entries_and_the_last_stands(out):
    from flows.review_app import ReviewServer, create_app

    keys = all_keys(out)
    barrier = threading.Barrier(2)
    errors = []

    def review(url: str, name: str, decision: str):
        host, port = url.removeprefix("http://").split(":")
        try:
            barrier.wait()
            for key in keys:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                body = json.dumps({"key": key, "decision": decision, "reviewer": name})
                conn.request("POST", "/api/decide", body, {"Content-Type": "application/json"})
                assert conn.getresponse().status == 200
                conn.close()
        except Exception as err:  # surfaced below: a thread's assert does not fail the test by itself
            errors.append(err)

    with ReviewServer(create_app(out)) as server:
        reviewers = (("ann", "accept"), ("bob", "reject"))
        threads = [threading.Thread(target=review, args=(server.url, n, d)) for n, d in reviewers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    db = open_db(out)
    history = db.decisions()
    assert len(history) == 2 * len(keys)
    states = db.states(keys)
    for key in keys:
        entries = [d for d in history if d["key"] == key]
        assert sorted(d["reviewer"] for d in entries) == ["ann", "bob"]  # both kept
        last = max(entries, key=lambda d: d["id"])
        assert states[key]["decision"] == last["decision"] and states[key]["reviewer"] == last["reviewer"]
    # ann's undo reverts only her own last entry: bob's decision on that window stands, whichever came last
    _, undone = db.undo("ann")
    assert undone == [keys[-1]]
    assert db.states(undone)[keys[-1]] | {"at": None, "decision_id": None} == {
        "key": keys[-1], "decision": "reject", "reviewer": "bob", "at": None, "decision_id": None}  # fmt: skip
    assert len(db.decisions()) == 2 * len(keys) + 1  # the undo is one more entry; nothing was removed


# --- publishing -------------------------------------------------------------------------------------------------


def test_publish_drops_exactly_the_rejected_and_the_undecided_queued(out, monkeypatch):
    db = open_db(out)
    keys = all_keys(out)
    _, _, queued = db.outcome_sets()
    queued_list = sorted(queued)
    plain = [k for k in keys if k not in queued]
    rejected = {plain[0], plain[-1], queued_list[0]}
    accepted = {queued_list[1]}
    for k in rejected:
        db.decide([k], "reject", "ann")
    db.decide(list(accepted), "accept", "bob")
    db.decide_group("reject", "ann", clip="grace2")
    rejected |= {k for k in keys if k.startswith("grace2-")}

    import subprocess

    def no_media(*a, **kw):
        raise AssertionError("publishing must not run ffmpeg or any other process")

    monkeypatch.setattr(subprocess, "run", no_media)
    monkeypatch.setattr(subprocess, "Popen", no_media)
    summary = publish(out)
    unreviewed = queued - rejected - accepted
    assert sorted(shard_keys(out)) == sorted(set(keys) - rejected - unreviewed)
    assert summary["review"]["rejected"] == len(rejected)
    assert summary["review"]["accepted"] == len(accepted)
    assert summary["review"]["unreviewed_excluded"] == len(unreviewed)
    assert summary["samples"] == len(shard_keys(out))
    r = rows(out)
    assert r["grace2"]["status"] == "rejected" and r["grace2"]["reason"] == "review_rejected"
    assert r["grace2"]["windows_written"] == 0
    for clip in ("alice1", "grace1", "xss"):
        assert r[clip]["windows_written"] == sum(k.startswith(clip + "-") for k in shard_keys(out))
        assert r[clip]["review"]["rejected"] == sum(k.startswith(clip + "-") for k in rejected)

    # the switch: queued windows nobody decided go in
    cfg = Config(review=ReviewConfig(include_unreviewed=True))
    summary = publish(out, cfg)
    assert sorted(shard_keys(out)) == sorted(set(keys) - rejected)
    assert summary["review"]["unreviewed_included"] == len(unreviewed)
    # undoing grace2's bulk reject leaves its windows queued (a reviewer asked for them) and undecided
    db.undo("ann")
    publish(out)
    assert (rows(out)["grace2"]["status"], rows(out)["grace2"]["reason"]) == ("rejected", "review_pending")
    publish(out, cfg)
    assert rows(out)["grace2"]["status"] == "ok"


def test_rebuild_honours_decisions_like_publish(built, out):
    """`make shards` again (every clip cached: no media work) packs the same shards as `publish`."""
    db = open_db(out)
    db.decide(all_keys(out)[:3], "reject", "ann")
    publish(out)
    published = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    summary = build(built.parent / "manifest.csv", out, mirror=built.parent / "mirror")
    assert summary["clips_processed"] == 0
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == published
    assert summary["review"]["rejected"] == 3


# --- the page: safety ---------------------------------------------------------------------------------------------


TRAVERSALS = [
    "/media/../../etc/passwd",
    "/media/crop/../../../../etc/passwd",
    "/media/crop/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/crop/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd.jpg",
    "/media/frame/..%252F..%252F..%252Fetc%252Fpasswd.jpg",
    "/media/crop/%2Fetc%2Fpasswd",
    "/media/crop/....//....//etc/passwd",
    "/media/wav/..\\..\\..\\etc\\passwd.wav",
    "/static/../review_app.py",
    "/static/..%2F..%2Fpipeline%2Freview.py",
    "/static/%2e%2e/review_app.py",
]


def test_path_traversal_is_refused(out):
    """Raw requests (an HTTP client would normalise the dots away) to a live server; then a database and a
    cache that point outside OUT."""
    from flows.review_app import ReviewServer, create_app

    key = next(k for k in all_keys(out) if k.startswith("grace2-"))
    with ReviewServer(create_app(out)) as server:
        host, port = server.url.removeprefix("http://").split(":")

        def get(path: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            r = conn.getresponse()
            return r.status, r.read()

        assert get(f"/media/crop/{key}.jpg")[0] == 200
        for path in TRAVERSALS:
            status, body = get(path)
            assert status in (400, 404), path
            assert b"root:" not in body and b"import" not in body, path
        # a cached frame that is a symlink out of OUT is not followed
        frame = out / "review" / "media" / "frame" / f"{key}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        frame.symlink_to("/etc/passwd")
        status, body = get(f"/media/frame/{key}.jpg")
        assert status == 404 and b"root:" not in body
        # nor a clip tar the database places outside OUT
        with sqlite3.connect(db_path(out)) as conn:
            conn.execute("UPDATE clips SET tar = '../../../../../../etc/passwd' WHERE clip_id = 'grace2'")
        status, body = get(f"/media/wav/{key}.wav")
        assert status == 404 and b"root:" not in body


def test_html_from_the_internet_is_escaped(out):
    queue_out(out, ReviewConfig(), identities=[XSS_ID])
    c = client(out)
    c.cookies.set("voiceface_reviewer", "%3Cscript%3Ealert(3)%3C%2Fscript%3E")
    r = c.get("/", params={"identity": XSS_ID, "clip": "<b onmouseover=alert(2)>"})
    assert r.status_code == 200  # the clip filter matches nothing, the page still renders
    r = c.get("/", params={"identity": XSS_ID})
    html = r.text
    assert html.count('<article class="card') == sum(k.startswith("xss-") for k in all_keys(out))
    for raw in (XSS_ID, XSS_SOURCE, "<script>alert(3)</script>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html.replace('<script src="/static/review.js" defer></script>', "")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_token_host_and_origin_checks(out, monkeypatch):
    from flows.cli import main
    from flows.review_app import check_bind

    monkeypatch.delenv("VOICEFACE_REVIEW_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t0k3n-Long-Enough-9x")  # a 5-character token is refused now (too weak)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    assert main(["review", str(out), "--host", "0.0.0.0"]) == 2

    key = all_keys(out)[0]
    c = client(out, token="t0k3n", loopback=False)
    assert c.get("/").status_code == 401
    assert c.get(f"/media/crop/{key}.jpg").status_code == 401
    assert c.get("/api/progress", headers={"X-Review-Token": "t0k3n"}).status_code == 200
    assert c.get("/?token=wrong").status_code == 401
    r = c.get("/?token=t0k3n&status=all", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?status=all"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/").status_code == 200  # the cookie now carries it
    assert c.post("/api/decide", json={"key": key, "decision": "accept", "reviewer": "ann"}).status_code == 200

    c = client(out)  # loopback: the Host must be a loopback name (no DNS rebinding)
    assert c.get("/", headers={"host": "evil.example:8765"}).status_code == 400
    assert c.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert c.get("/", headers={"host": "[::1]:8765"}).status_code == 200
    body = json.dumps({"key": key, "decision": "reject"})
    assert c.post("/api/decide", content=body, headers={"content-type": "text/plain"}).status_code == 415
    cross = {"content-type": "application/json", "origin": "http://evil.example"}
    assert c.post("/api/decide", content=body, headers=cross).status_code == 403
    same = {"content-type": "application/json", "origin": "http://127.0.0.1:8765"}
    assert c.post("/api/decide", content=body, headers=same).status_code == 200
    assert c.post("/api/decide", json={"key": "nope-00000", "decision": "reject"}).status_code == 404
    assert c.post("/api/decide", json={"key": key, "decision": "maybe"}).status_code == 422


def test_page_media_and_api(out):
    c = client(out)
    key = next(k for k in all_keys(out) if k.startswith("grace2-"))
    assert c.get(f"/media/crop/{key}.jpg").headers["content-type"] == "image/jpeg"
    frame = c.get(f"/media/frame/{key}.jpg")  # the source is a local file: its frame, boxed, cached in OUT
    assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).width <= 640
    assert (out / "review" / "media" / "frame" / f"{key}.jpg").exists()
    from tests.conftest import read_wav

    assert len(read_wav(c.get(f"/media/wav/{key}.wav").content)) == 16000
    assert abs(len(read_wav(c.get(f"/media/context/{key}.wav").content)) - 64000) <= 320
    assert c.get(f"/media/crop/{key}.png").status_code == 404
    r = c.post("/api/bulk", json={"identity": "grace", "decision": "reject", "reviewer": "bob"})
    assert len(r.json()["keys"]) == sum(k.startswith(("grace1-", "grace2-", "odd1-")) for k in all_keys(out))
    assert r.json()["progress"]["reviewers"]["bob"]["reject"] == len(r.json()["keys"])
    undo = c.post("/api/undo", json={"reviewer": "bob"}).json()
    assert set(undo["keys"]) == set(r.json()["keys"]) and all(v is None for v in undo["states"].values())
    assert c.post("/api/queue", json={"clip": "alice1", "reviewer": "bob"}).json()["queued"] > 0
    assert c.post("/api/queue", json={"clip": "nope"}).status_code == 404
    done = c.post("/api/done", json={"reviewer": "bob"}).json()
    assert done["resumed"] is False and "no curate run" in done["message"]


def test_a_queue_of_10000_renders_one_page(tmp_path):
    """Only one page of cards (and no media) goes out, whatever the queue's size: bench_review.py times it."""
    from benchmarks.bench_review import synthetic_queue

    out = synthetic_queue(tmp_path / "big", 10_000)
    c = client(out)
    r = c.get("/")
    assert r.status_code == 200
    assert r.text.count('<article class="card') == ReviewConfig().page_size == 50
    assert "page 61 of 200" in r.text  # it opens where the undecided windows begin (3000 are decided)
    assert r.text.count("<img ") == r.text.count('loading="lazy"') <= 100  # images load as they scroll in
    assert r.text.count("<audio ") == r.text.count('preload="none"') == 100  # audio only when played
    r = c.get("/?page=200&reason=blurry")
    assert r.text.count('<article class="card') <= 50
    assert c.get("/api/progress").json()["queued"] == 10_000

    # deciding a page of `pending` and going on skips no undecided window
    def keys_and_next(html: str) -> tuple[list[str], str]:
        keys = re.findall(r'data-key="([^"]+)"', html)
        return keys, re.search(r'id="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")

    first, next_url = keys_and_next(c.get("/?status=pending&page=1").text)
    second, _ = keys_and_next(c.get("/?status=pending&page=2").text)
    for key in first:
        assert c.post("/api/decide", json={"key": key, "decision": "accept", "reviewer": "ann"}).status_code == 200
    assert keys_and_next(c.get(next_url).text)[0] == second


# --- in a real browser --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_keyboard_review_in_chromium(out, tmp_path):
    """Chromium (Debian's, driven by Playwright) presses the keys, sees the cards change, reloads, finds the
    decisions kept; no dialog opens although identities and sources are HTML."""
    from playwright.sync_api import expect, sync_playwright

    from flows.review_app import ReviewServer, create_app

    assert Path(CHROMIUM).exists(), "Chromium is missing: run `make setup` (apt package chromium)"
    queue_out(out, ReviewConfig(), identities=["grace", XSS_ID], reviewer="bob")
    db = open_db(out)
    queued = sorted(db.outcome_sets()[2], key=lambda k: db.item(k)["seq"])
    db.decide([queued[-1]], "reject", "bob")  # a second reviewer, for the progress header
    dialogs = []
    with ReviewServer(create_app(out)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url + "/")
        cards = page.locator("article.card")
        card = lambda i: cards.nth(i)  # noqa: E731
        expect(card(0)).to_have_class("card state-pending focused")
        page.fill("#reviewer", "ann")
        page.press("#reviewer", "Enter")  # leaves the input: keys go to the cards again
        page.keyboard.press("a")
        expect(card(0)).to_have_class("card state-accept")
        expect(card(1)).to_have_class("card state-pending focused")  # it moves on by itself
        page.keyboard.press("j")
        expect(card(2)).to_have_class("card state-pending focused")
        page.keyboard.press("r")
        expect(card(2)).to_have_class("card state-reject")
        page.keyboard.press("k")
        expect(card(2)).to_have_class("card state-reject focused")
        page.keyboard.press("u")
        expect(card(2)).to_have_class("card state-pending focused")  # undone, and focused where it happened
        page.keyboard.press("r")
        expect(card(2)).to_have_class("card state-reject")
        expect(page.locator("#p-reviewed")).to_have_text("3")
        expect(page.locator("#p-reviewers")).to_contain_text("ann: 1 accepted, 1 rejected")
        page.keyboard.press("k")
        page.keyboard.press(" ")  # plays the focused card's 1 s window
        page.wait_for_function("!document.querySelector('article.card.focused audio.a1').paused "
                               "|| document.querySelector('article.card.focused audio.a1').ended")  # fmt: skip
        keys = [card(i).get_attribute("data-key") for i in range(3)]

        page.reload()
        expect(card(0)).to_have_class("card state-accept")
        expect(card(1)).to_have_class("card state-pending focused")
        expect(card(2)).to_have_class("card state-reject")
        expect(card(0).locator(".by")).to_have_text(" by ann")
        page.locator("article.card").nth(0).scroll_into_view_if_needed()
        shot = tmp_path / "review.png"
        page.screenshot(path=str(shot))
        if target := os.environ.get("REVIEW_SCREENSHOT"):  # README's picture: REVIEW_SCREENSHOT=docs/review.png
            Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)
        browser.close()
    assert not dialogs
    states = open_db(out).states(keys)
    assert [states.get(k, {}).get("decision") for k in keys] == ["accept", None, "reject"]
    assert [(d["key"], d["decision"]) for d in open_db(out).decisions() if d["reviewer"] == "ann"] == [
        (keys[0], "accept"), (keys[2], "reject"), (keys[2], "undo"), (keys[2], "reject")]  # fmt: skip


# --- the curate flow ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_curate_flow_waits_for_the_batch_then_publishes(out, prefect_harness):
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from flows.curate import RUN_KEY, curate

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=curate(str(out), poll_interval_s=1, timeout_s=300)))
    thread.start()
    db = open_db(out)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and thread.is_alive(), "the flow did not pause"
        if run_id := db.get_meta(RUN_KEY):
            with get_client(sync_client=True) as prefect:
                if prefect.read_flow_run(UUID(run_id)).state.is_paused():
                    break
        time.sleep(0.3)
    keys = all_keys(out)
    c = client(out)
    assert c.post("/api/decide", json={"key": keys[0], "decision": "reject", "reviewer": "ann"}).status_code == 200
    assert "waiting for this batch" in c.get("/").text
    r = c.post("/api/done", json={"reviewer": "ann"})  # what the page's button does
    assert r.status_code == 200 and r.json()["resumed"] is True
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert result["summary"]["published"] is True and result["summary"]["review"]["rejected"] == 1
    assert keys[0] not in shard_keys(out)
    assert db.get_meta(RUN_KEY) is None
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(UUID(run_id)).state.is_completed()
    assert [a["kind"] for a in db.actions()][-2:] == ["decide", "done"]


# --- rejected windows put back by a reviewer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(media, tmp_path_factory) -> Path:
    """A build whose blur filter rejects every face: alice's clip is rejected whole, its windows kept as data."""
    root = tmp_path_factory.mktemp("rescue")
    shutil.copy(media.moving, root / "moving.mp4")
    shutil.copy(media.stereo48k, root / "stereo48k.mp4")
    manifest = root / "manifest.csv"
    manifest.write_text("source,id,identity\nmoving.mp4,alice1,alice\nstereo48k.mp4,grace2,grace\n")
    cfg = Config.from_dict({"filters": {"min_sharpness": 1e9}})
    out = root / "out"
    build(manifest, out, cfg=cfg)
    return out


def test_rejected_windows_are_queued_by_reason_and_an_accepted_one_ships(strict, tmp_path):
    from pipeline.review.queue import queue_rejected

    out = tmp_path / "out"
    shutil.copytree(strict, out)
    assert rows(out)["alice1"]["status"] == "rejected" and shard_keys(out) == []
    counts = queue_rejected(out, ["blurry"])
    assert counts["blurry"] == sum(r["window_rejections"].get("blurry", 0) for r in rows(out).values()) > 4
    assert counts["no_sample"] == 0  # every blurry window had its face
    again = queue_rejected(out, ["blurry"])  # queuing again adds nothing twice
    db = open_db(out)
    assert again == counts and db.progress()["queued"] == counts["blurry"]
    keys = sorted(db.outcome_sets()[2])
    assert all(db.item(k)["rescue"] and db.item(k)["reasons"] == '["rejected:blurry"]' for k in keys)
    # the card's media come from the rejected-windows tar
    assert client(out).get(f"/media/crop/{keys[0]}.jpg").content[:2] == b"\xff\xd8"
    alice = [k for k in keys if k.startswith("alice1-")]
    db.decide(alice[:2], "accept", "ann")
    db.decide(alice[2:3], "reject", "ann")
    publish(out, Config.from_dict({"filters": {"min_sharpness": 1e9}}))
    assert shard_keys(out) == alice[:2]  # exactly the accepted ones; the undecided stay out
    row = rows(out)["alice1"]
    assert (row["status"], row["windows_written"]) == ("ok", 2) and "put back by review" in row["detail"]
    assert rows(out)["grace2"]["status"] == "rejected"
    # a rebuild with the same settings honours the same decisions
    publish(out, Config.from_dict({"filters": {"min_sharpness": 1e9}}))
    assert shard_keys(out) == alice[:2]


def test_rescue_in_chromium(strict, tmp_path):
    """From the command line to the shards: `voiceface queue --reason blurry`, a reviewer presses `a` on the page
    filtered to that reason, `voiceface publish` ships the window."""
    from playwright.sync_api import expect, sync_playwright

    from flows.cli import main as cli
    from flows.review_app import ReviewServer, create_app

    out = tmp_path / "out"
    shutil.copytree(strict, out)
    config = tmp_path / "c.yaml"
    config.write_text("filters:\n  min_sharpness: 1.0e9\n")
    assert cli(["queue", str(out), "--config", str(config), "--reason", "blurry"]) == 0
    with ReviewServer(create_app(out)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "/?reason=rejected:blurry")
        card = page.locator("article.card").nth(0)
        expect(card).to_contain_text("rejected by the build (blurry)")
        expect(card.locator("img.crop")).to_have_js_property("complete", True)
        assert card.locator("img.crop").evaluate("img => img.naturalWidth") > 0  # the crop loaded
        page.fill("#reviewer", "ann")
        page.press("#reviewer", "Enter")
        page.keyboard.press("a")
        expect(card).to_have_class("card state-accept")
        key = card.get_attribute("data-key")
        browser.close()
    assert cli(["publish", str(out), "--config", str(config)]) == 0
    assert shard_keys(out) == [key]


def test_a_crash_while_the_queue_fills_leaves_it_as_it_was_and_repair_finds_nothing_wrong(built, tmp_path, monkeypatch):
    from pipeline.review.db import ReviewDB

    out = tmp_path / "out"
    shutil.copytree(built, out)
    clean = open_db(out).outcome_sets()[2]
    assert clean  # the build queued borderline windows
    db_path(out).unlink()
    for extra in db_path(out).parent.glob("review.db-*"):
        extra.unlink()

    def crash(self, rows, conn=None):
        raise KeyboardInterrupt  # killed between indexing the clips and queuing their windows

    monkeypatch.setattr(ReviewDB, "update_items", crash)
    with pytest.raises(KeyboardInterrupt):
        queue_out(out, ReviewConfig())
    db = open_db(out)
    assert db.clips() == {} and db.scan_items() == []  # all or nothing: no clip indexed without its reasons
    monkeypatch.undo()
    queue_out(out, ReviewConfig())
    assert open_db(out).outcome_sets()[2] == clean
    assert queue_out(out, ReviewConfig(), repair=True)["changed"] == 0
    publish(out)
    assert not set(shard_keys(out)) & clean  # nothing queued and undecided ships


def test_the_server_bounds_its_parameters_refuses_weak_tokens_and_tells_an_overridden_reviewer(out):
    from flows.review_app import REVIEWER_COOKIE, check_bind

    c = client(out)
    for q in (f"page={2**70}", f"after={2**70}", "page=0", "page=-5"):
        assert c.get(f"/?{q}").status_code == 422, q  # refused, never a 500
    assert c.get("/?page=3").status_code == 200
    for weak in ("x", "aaaaaaaaaaaaaaaaaaaa", "short-token"):
        with pytest.raises(ValueError, match="too weak"):
            check_bind("0.0.0.0", weak)
    check_bind("0.0.0.0", "Zq8w-3vK_p1x9LmN4rTy")
    check_bind("127.0.0.1", None)  # loopback needs none

    key = sorted(open_db(out).outcome_sets()[2])[0]
    headers = {"origin": "http://127.0.0.1:8765"}
    r = c.post("/api/decide", json={"key": key, "decision": "accept", "reviewer": "ann"}, headers=headers)
    assert r.status_code == 200 and "overrode" not in r.json()
    r = c.post("/api/decide", json={"key": key, "decision": "reject", "reviewer": "bob"}, headers=headers)
    assert r.json()["overrode"] == {"reviewer": "ann", "decision": "accept"}  # bob is told whose decision he changed
    c.cookies.set(REVIEWER_COOKIE, "ann")
    page = c.get("/?status=all").text
    assert "1 of your decisions were changed by another reviewer" in page and key in page  # and ann is told
    c.cookies.set(REVIEWER_COOKIE, "bob")
    assert "were changed by another reviewer" not in c.get("/?status=all").text
