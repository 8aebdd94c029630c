"""Batched work and streamed rows: a few hundred fast-failing rows through the planner (rows on disk), batches of
clips (each clip still its own status), and the finish (clips.jsonl in line order, one row each)."""

import json

import pytest

import pipeline.batch
from pipeline.batch import batch_size, batches, run_batch
from pipeline.build import finish_build, plan_build
from pipeline.manifest import read_manifest
from pipeline.records import Clip

N = 300


@pytest.fixture
def manifest(tmp_path, media):
    lines = ["source,id,identity,start,end,split"]
    for i in range(N):
        lines.append(f"missing/{i}.mp4,r{i:04d},p{i % 40},0,{1 + i % 7},")
    lines[5] = "missing/dup.mp4,r0001,p1,0,2,"  # a duplicate id
    lines[9] = "missing/bad.mp4,r0008x,p8,5,1,"  # start after end
    lines[12] = "missing/val.mp4,r0011,p11,0,2,val"  # p11's rows all go to val
    lines.append(f"{media.moving},real,alice,,,")  # one clip that works, so the shards are not empty
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batches_by_count_and_by_seconds():
    clips = [Clip(f"c{i}", "s", "p", i + 1, start=0, end=16000 * 10) for i in range(25)]
    assert [len(b) for b in batches(clips, 10)] == [10, 10, 5]
    assert [len(b) for b in batches(clips, 100, max_seconds=35)] == [3] * 8 + [1]
    whole = [Clip("w", "s", "p", 1), *clips[:2]]  # a whole file counts as UNKNOWN_CLIP_S
    assert [len(b) for b in batches(whole, 100, max_seconds=65)] == [1, 2]
    assert batch_size(20000, 2) == 200 and batch_size(10, 2) == 2 and batch_size(0, 2) == 1


def test_planned_rows_stream_from_disk_and_finish_in_line_order(manifest, tmp_path):
    out = tmp_path / "out"
    plan = plan_build(manifest, out)
    m = read_manifest(manifest)  # the in-memory reader agrees with the streamed plan
    assert (plan.n_new, plan.n_rejected) == (len(m.clips), len(m.rejected)) == (N - 1, 2)
    todo = list(plan.todo)
    assert [c.clip_id for c in todo] == [c.clip_id for c in m.clips]
    assert [c.split for c in todo] == [c.split for c in m.clips]
    assert {c.split for c in todo if c.identity == "p11"} == {"val"}

    results = [run_batch(b, plan.ctx) for b in batches(plan.todo, batch_size(len(plan.todo), 2))]
    assert len(results) == 8 and sum(r.clips for r in results) == N - 1
    assert sum(r.reasons["file_not_found"] for r in results) == N - 2
    summary = finish_build(plan)
    rows = [json.loads(x) for x in open(out / "clips.jsonl")]
    assert len(rows) == N + 1 and [r["line"] for r in rows] == sorted(r["line"] for r in rows)
    assert rows[4]["reason"] == "duplicate_id" and rows[8]["reason"] == "bad_row"
    assert rows[-1]["id"] == "real" and rows[-1]["status"] == "ok"
    assert summary["reasons"]["file_not_found"] == N - 2 and summary["samples"] > 0

    again = plan_build(manifest, out)  # the ok clip is cached; a missing file may appear, so those are redone
    assert (again.n_cached, again.n_redone, len(again.todo), bool(again.todo)) == (1, N - 2, N - 2, True)
    assert "real" not in {c.clip_id for c in again.todo}


def test_a_crash_in_a_batch_is_recorded_and_the_batch_goes_on(manifest, tmp_path, monkeypatch):
    plan = plan_build(manifest, tmp_path / "out")
    batch = list(plan.todo)[:5]
    real = pipeline.batch.run_clip

    def buggy(clip, ctx, download_gate=None):
        if clip.clip_id == "r0002":
            raise KeyError("a bug")
        return real(clip, ctx, download_gate)

    monkeypatch.setattr(pipeline.batch, "run_clip", buggy)
    result = run_batch(batch, plan.ctx)
    assert result.clips == 5 and [c for c, _ in result.crashes] == ["r0002"] and "KeyError" in result.crashes[0][1]
    assert result.statuses == {"failed": 5} and result.reasons["internal_error"] == 1
    status = json.loads(plan.ctx.clip_status_path("r0002").read_text())
    assert (status["status"], status["reason"]) == ("failed", "internal_error")


def test_statuses_reported_by_batches_are_what_the_finish_writes(manifest, tmp_path):
    out = tmp_path / "out"
    plan = plan_build(manifest, out)
    results = [run_batch(b, plan.ctx) for b in batches(plan.todo, 50)]
    for r in results:
        plan.store.set_statuses(r.records)
    on_disk = {p.stem: json.loads(p.read_text()) for p in (out / ".work" / "clips").glob("*.json")}
    (out / ".work" / "clips" / "r0002.json").unlink()  # the finish takes the batch's word, not the file's
    finish_build(plan)
    rows = {r["id"]: r for r in map(json.loads, open(out / "clips.jsonl")) if r["reason"] != "duplicate_id"}
    rows = {i: r for i, r in rows.items() if i in on_disk}
    assert rows.keys() == on_disk.keys() and rows["r0002"]["reason"] == on_disk["r0002"]["reason"]
    diff = [(rows[i]["detail"], on_disk[i]["detail"]) for i in rows if rows[i]["detail"] != on_disk[i]["detail"]]
    assert not diff


def test_a_torn_status_file_means_the_clip_is_done_again(manifest, tmp_path):
    out = tmp_path / "out"
    plan = plan_build(manifest, out)
    for b in batches(plan.todo, 100):
        run_batch(b, plan.ctx)
    (out / ".work" / "clips" / "real.json").write_bytes(b"")  # what a power cut can leave of an unsynced file
    again = plan_build(manifest, out)
    assert "real" in {c.clip_id for c in again.todo}
    assert again.n_cached == 0 and again.n_new == 1 and again.n_redone == N - 2
