"""How fast the review page answers with 10,000 queued windows (`make bench-review`).

A synthetic OUT gets a review database of N windows (100 per clip, 40 identities, every window queued with
one of the automatic reasons, a share already decided) whose media all point at one real sample in one clip
tar. The page is then served by uvicorn on 127.0.0.1, as `voiceface review` serves it, and each request is
timed from the client's side over HTTP (connect, request, whole body): pages at the start, middle and end of
the queue, filtered pages, the progress header, a decision, and a face crop.
Figures are printed as a table and written to out/bench/bench_review.json.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REASONS = ["low_speech_ratio", "small_face", "blurry", "low_face_score", "identity_outlier"]


def synthetic_queue(out: Path, n: int, per_clip: int = 100, decided: float = 0.3, seed: int = 0) -> Path:
    """An OUT whose review database holds `n` queued windows (a `decided` share reviewed by two people)."""
    from PIL import Image

    from pipeline.review.db import ClipRow, ItemRow
    from pipeline.review.queue import open_db
    from pipeline.speech import wav_bytes
    from pipeline.tars import write_samples

    rng = np.random.default_rng(seed)
    tar = out / ".work" / "clips" / "synthetic.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    jpg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), "RGB").save(jpg, "JPEG")
    sample = {"__key__": "synthetic-00000", "jpg": jpg.getvalue(), "wav": wav_bytes(np.zeros(16000, np.int16)),
              "json": b"{}"}  # fmt: skip
    write_samples(tar, [sample], 0.0)
    from pipeline.tars import member_index

    members = {ext: list(where) for ext, where in member_index(tar)["synthetic-00000"].items()}
    st = tar.stat()
    db = open_db(out)
    batches = []
    for c in range(n // per_clip):
        clip_id, identity = f"clip{c:05d}", f"person{c % 40:02d}"
        row = ClipRow(clip_id, c, identity, "train", f"https://example.org/{clip_id}.mp4", None,
                      ".work/clips/synthetic.tar", st.st_size, st.st_mtime_ns)  # fmt: skip
        items = [
            ItemRow(
                key=f"{clip_id}-{w:05d}",
                clip_id=clip_id,
                identity=identity,
                window_index=w,
                metrics={
                    "det_score": round(float(rng.uniform(0.2, 2)), 3),
                    "face_px": int(rng.integers(70, 200)),
                    "sharpness": round(float(rng.uniform(5, 400)), 2),
                    "speech_ratio": round(float(rng.uniform(0.5, 1)), 3),
                    "identity_distance": round(float(rng.uniform(0, 0.9)), 3),
                },
                meta={
                    "window_start": float(w),
                    "window_end": float(w + 1),
                    "frame_time": w + 0.5,
                    "bbox": [100, 100, 200, 200],
                    "source": f"https://example.org/{clip_id}.mp4",
                },
                members=members,
            )
            for w in range(per_clip)
        ]
        batches.append((row, items, {}))
    db.sync_clips([], batches, [])
    windows = [i for _, items, _ in batches for i in items]
    db.update_items(
        (json.dumps(w.metrics), json.dumps([REASONS[i % len(REASONS)]]), 1, w.key) for i, w in enumerate(windows)
    )
    keys = [w.key for w in windows]
    done = keys[: int(len(keys) * decided)]
    for i in range(0, len(done), 10):  # ten windows an action keeps the set-up short
        db.decide(done[i : i + 10], "accept" if i % 30 else "reject", "ann" if i % 20 else "bob")
    return out


def timed(host: str, port: int, method: str, path: str, body: dict | None = None, repeat: int = 20) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 200, (path, r.status)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main(n: int = 10_000) -> dict:
    from flows.review_app import ReviewServer, create_app
    from pipeline.review.queue import open_db

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = synthetic_queue(Path(tmp) / "out", n)
        setup_s = time.perf_counter() - t0
        progress = open_db(out).progress()
        per_clip = 100
        key = f"clip{n // 200:05d}-00050"
        pages = n // 50
        cases = [
            ("page 1 (first pending page)", "GET", "/", None),
            ("page 1, explicit", "GET", "/?page=1", None),
            (f"page {pages // 2} (middle)", "GET", f"/?page={pages // 2}", None),
            (f"page {pages} (last)", "GET", f"/?page={pages}", None),
            ("pending only, page 20", "GET", "/?status=pending&page=20", None),
            ("next page (after a position)", "GET", f"/?status=pending&after={n // per_clip // 2}000050", None),
            ("reason=blurry, page 10", "GET", "/?reason=blurry&page=10", None),
            ("identity=person07", "GET", "/?identity=person07", None),
            ("progress (JSON)", "GET", "/api/progress", None),
            ("decide (POST)", "POST", "/api/decide", {"key": key, "decision": "accept", "reviewer": "ann"}),
            ("face crop (from the tar)", "GET", f"/media/crop/{key}.jpg", None),
        ]
        results = {}
        with ReviewServer(create_app(out)) as server:
            host, port = server.url.removeprefix("http://").split(":")
            timed(host, int(port), "GET", "/", repeat=3)  # warm: templates compiled, caches filled
            for name, method, path, body in cases:
                t = timed(host, int(port), method, path, body)
                results[name] = {"median_ms": round(statistics.median(t), 1), "max_ms": round(max(t), 1)}
    print(f"review page, {n} queued windows ({progress['reviewed']} decided), 50 cards a page; "
          f"set-up {setup_s:.1f} s\n")  # fmt: skip
    print(f"{'request':34s} {'median ms':>10s} {'max ms':>8s}\n" + "-" * 54)
    for name, r in results.items():
        print(f"{name:34s} {r['median_ms']:10.1f} {r['max_ms']:8.1f}")
    report = {"queued": n, "results": results}
    dest = ROOT / "out" / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bench_review.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
