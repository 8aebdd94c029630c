"""The curation queue: which kept windows a person should look at, and how their decisions gate the shards.

A build indexes every window of its ok clips in OUT/review/review.db (offsets in the clip tar, metrics, the
dlib embedding) and queues those the checks below find borderline; a reviewer can also queue whole clips or
identities. Packing then keeps a window unless it was rejected, or it is queued, undecided and
`review.include_unreviewed` is off. Nothing here redoes media work: everything is read from the clip tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ReviewConfig
from ..lock import out_lock
from ..quality import medoid_distances
from ..reasons import QueueReason, Reason
from ..records import Clip, ClipStatus
from ..tars import member_index, read_samples
from .db import RESCUE_PREFIX, ClipRow, ItemRow, RescueRow, ReviewDB, now

REVIEW_DIR = "review"
RESCUE_SEQ_BASE = 1_000_000_000  # rescue items follow every kept window in the queue
META_FIELDS = ("window_start", "window_end", "frame_time", "bbox", "source", "speaker_choice", "faces_seen")
# measured once, by the build's filters (pipeline/quality.py), and read from the sample json, never recomputed
METRIC_FIELDS = (
    "det_score", "face_px", "speech_ratio", "rms_dbfs", "sharpness", "relative_sharpness", "av_sync", "av_unsynced",
)  # fmt: skip


def item_row(key: str, clip_id: str, identity: str, window_index: int, meta: dict, members: dict) -> ItemRow:
    """A queue item from a sample's json: its metrics and the fields a card shows."""
    metrics = {k: meta[k] for k in METRIC_FIELDS if meta.get(k) is not None}
    shown = {k: meta[k] for k in META_FIELDS if k in meta}
    return ItemRow(key, clip_id, identity, window_index, metrics, shown, members)


def db_path(out: Path) -> Path:
    return Path(out) / REVIEW_DIR / "review.db"


def open_db(out: Path) -> ReviewDB:
    return ReviewDB(db_path(out))


@dataclass(frozen=True)
class QueueClip:
    """An ok clip as the queue sees it: where its tar is and, if still on disk, its source video."""

    clip_id: str
    identity: str
    split: str | None
    tar: Path
    source: str | None = None
    source_path: Path | None = None


# --- checks: pure functions of a window's metrics -----------------------------------------------------------

Check = Callable[[dict, ReviewConfig], bool]
# Later stages add their own: (reason, is the window borderline?). A missing metric never flags a window.
CHECKS: list[tuple[QueueReason, Check]] = [
    (QueueReason.LOW_FACE_SCORE, lambda m, c: m.get("det_score", np.inf) < c.min_det_score),
    (QueueReason.SMALL_FACE, lambda m, c: m.get("face_px", np.inf) < c.min_face_px),
    (
        QueueReason.BLURRY,
        lambda m, c: (
            m.get("sharpness", np.inf) < c.min_sharpness
            or m.get("relative_sharpness", np.inf) < c.min_relative_sharpness
        ),
    ),
    (QueueReason.LOW_SPEECH_RATIO, lambda m, c: m.get("speech_ratio", np.inf) < c.min_speech_ratio),
    (QueueReason.IDENTITY_OUTLIER, lambda m, c: m.get("identity_distance", -np.inf) > c.max_identity_distance),
    (QueueReason.AV_UNSYNCED, lambda m, c: c.queue_av_unsynced and m.get("av_unsynced") is True),
]


def queue_reasons(metrics: dict, cfg: ReviewConfig) -> list[str]:
    """The reasons a window with these metrics is queued (empty: it goes straight into the shards)."""
    return [str(reason) for reason, check in CHECKS if check(metrics, cfg)]


def describe(reason: str, metrics: dict, cfg: ReviewConfig) -> str:
    """One line a reviewer reads: the reason with the measure and the threshold that flagged it."""
    try:
        return _describe(reason, metrics, cfg)
    except (KeyError, TypeError, ValueError):  # a reason whose measure is not in the metrics
        return reason


def _describe(reason: str, m: dict, cfg: ReviewConfig) -> str:
    if reason.startswith(RESCUE_PREFIX):
        return f"rejected by the build ({reason.removeprefix(RESCUE_PREFIX)}): accept to put it in the shards"
    match reason:
        case QueueReason.LOW_FACE_SCORE:
            return f"face score {m['det_score']:.2f} < {cfg.min_det_score}"
        case QueueReason.SMALL_FACE:
            return f"face {m['face_px']} px < {cfg.min_face_px}"
        case QueueReason.BLURRY:
            if m.get("relative_sharpness", np.inf) < cfg.min_relative_sharpness:
                return f"relative sharpness {m['relative_sharpness']:.4f} < {cfg.min_relative_sharpness}"
            return f"sharpness {m['sharpness']:.1f} < {cfg.min_sharpness}"
        case QueueReason.LOW_SPEECH_RATIO:
            return f"speech {m['speech_ratio']:.0%} < {cfg.min_speech_ratio:.0%}"
        case QueueReason.IDENTITY_OUTLIER:
            return f"{m['identity_distance']:.2f} from identity medoid > {cfg.max_identity_distance}"
        case QueueReason.AV_UNSYNCED:
            return f"AV sync {m['av_sync']:.2f}: the mouth barely follows the speech"
        case QueueReason.REQUESTED:
            return "queued by a reviewer"
    return reason


# --- scanning clip tars ----------------------------------------------------------------------------------------


def scan_clip(clip: QueueClip) -> tuple[list[ItemRow], dict[str, bytes]]:
    """Index a clip tar: each window's member offsets, metrics and embedding (read, never re-encoded)."""
    index = member_index(clip.tar)
    members = {key: {ext: list(where) for ext, where in exts.items()} for key, exts in index.items()}
    data = {s["__key__"]: s for s in read_samples(clip.tar)}
    items, vecs = [], {}
    for key, mem in members.items():
        d = data.get(key, {})
        if "json" not in d:
            continue
        meta = json.loads(d["json"])
        if "dlib.npy" in d:
            vecs[key] = np.load(io.BytesIO(d["dlib.npy"])).astype(np.float32).tobytes()
        items.append(item_row(key, clip.clip_id, clip.identity, int(meta.get("window_index", 0)), meta, mem))
    return items, vecs


def fill_queue(out: Path, clips: list[QueueClip], cfg: ReviewConfig, repair: bool = False) -> dict:
    """Index the ok clips (rescanning only tars that changed) and queue the borderline windows, in one
    transaction: a crash part-way leaves the queue as it was, never half-filled.

    `clips` is every ok clip of the build, in manifest order; clips no longer in it leave the index (their
    decisions stay in the history). Windows a reviewer queued or decided stay queued. With `repair`, every
    identity's distances and every window's reasons are recomputed, not only those of changed clips, so a
    queue left wrong by an older version or an outside change is put right. Returns counts (`changed`: windows
    whose metrics, reasons or queued flag were updated).
    """
    out = Path(out)
    db = open_db(out)
    rows = []
    for seq, c in enumerate(clips):  # the tars are read before the transaction: it stays short
        st = c.tar.stat()
        rows.append((c, ClipRow(
            clip_id=c.clip_id, seq=seq, identity=c.identity, split=c.split, source=c.source,
            source_path=str(c.source_path.resolve()) if c.source_path else None,
            tar=os.path.relpath(c.tar.resolve(), out.resolve()), tar_size=st.st_size, tar_mtime_ns=st.st_mtime_ns,
        )))  # fmt: skip
    known = db.clips()
    scans = {c.clip_id: scan_clip(c) for c, row in rows if _changed(known.get(c.clip_id), row)}
    with db.write() as conn:
        known = db.clips(conn)  # again, inside the transaction: another writer may have filled it meanwhile
        keep, rescanned, touched = [], [], set()
        for c, row in rows:
            old = known.get(c.clip_id)
            if not _changed(old, row):
                keep.append(row)
                if old.identity != row.identity:  # type: ignore[union-attr]
                    touched |= {old.identity, row.identity}  # type: ignore[union-attr]
                continue
            items, vecs = scans[c.clip_id] if c.clip_id in scans else scan_clip(c)
            rescanned.append((row, items, vecs))
            touched.add(row.identity)
            if old is not None:
                touched.add(old.identity)
        current = {c.clip_id for c in clips}
        removed = [k for k in known if k not in current]
        touched |= {known[k].identity for k in removed}
        db.sync_clips(keep, rescanned, removed, conn)
        if repair:
            touched |= {r["identity"] for r in db.scan_items(conn)}

        distances: dict[str, float | None] = {}
        for identity in touched:
            vecs = db.embeddings_of(identity, conn)
            if len(vecs) >= cfg.min_identity_windows:
                d = medoid_distances(np.stack([np.frombuffer(v, dtype=np.float32) for _, v in vecs]))
                distances.update({k: round(float(x), 4) for (k, _), x in zip(vecs, d, strict=True)})
            else:
                distances.update({k: None for k, _ in vecs})

        updates, counts = [], Counter()
        for r in db.scan_items(conn):
            metrics = json.loads(r["metrics"])
            if r["key"] in distances:
                if distances[r["key"]] is None:
                    metrics.pop("identity_distance", None)
                else:
                    metrics["identity_distance"] = distances[r["key"]]
            reasons = queue_reasons(metrics, cfg) + ([str(QueueReason.REQUESTED)] if r["requested"] else [])
            queued = int(bool(reasons) or bool(r["decided"]))
            counts.update(reasons)
            counts["queued"] += queued
            counts["windows"] += 1
            new = (json.dumps(metrics), json.dumps(reasons), queued)
            if new != (r["metrics"], r["reasons"], r["queued"]):
                updates.append((*new, r["key"]))
        db.update_items(updates, conn)
        db.set_meta("filled_at", now(), conn)
    windows, queued = counts.pop("windows", 0), counts.pop("queued", 0)
    return {"windows": windows, "queued": queued, "reasons": dict(counts), "changed": len(updates)}


def _changed(old: ClipRow | None, row: ClipRow) -> bool:
    return old is None or (old.tar_size, old.tar_mtime_ns) != (row.tar_size, row.tar_mtime_ns)


def build_clips(out: Path, clips: list[tuple[Clip, ClipStatus]], mirror: Path | None, base_dir: Path | None):
    """QueueClips for a build's ok clips, with their source file when it is a local file or in the mirror."""
    from ..sources import find_in_mirror, local_path

    result = []
    for clip, status in clips:
        if status.status != "ok":
            continue
        src = (find_in_mirror(clip, mirror) if mirror else None) or local_path(clip.source, base_dir)
        tar = Path(out) / ".work" / "clips" / f"{clip.clip_id}.tar"
        result.append(QueueClip(clip.clip_id, clip.identity, status.split, tar, clip.source, src))
    return result


def clips_in_out(out: Path, mirror: Path | None = None) -> tuple[list[ClipStatus], list[QueueClip]]:
    """clips.jsonl's rows, and the ok clips of OUT (from .work/clips, in clips.jsonl order), without the manifest.

    A row's clip is ok when its finished status in .work/clips says so and its tar is there, whatever
    clips.jsonl says (an earlier review may have emptied it). Sources come from the last fill, the mirror, or
    an absolute path in the samples.
    """
    from ..sources import find_in_mirror, local_path

    out = Path(out)
    jsonl = out / "clips.jsonl"
    if not jsonl.exists():
        raise FileNotFoundError(f"{jsonl} not found: build OUT first (voiceface build / make shards)")
    known = open_db(out).clips() if db_path(out).exists() else {}
    rows, clips = [], []
    reviewed = (str(Reason.REVIEW_REJECTED), str(Reason.REVIEW_PENDING))
    for line in jsonl.read_text().splitlines():
        row = ClipStatus.from_dict(json.loads(line))
        work = out / ".work" / "clips" / f"{row.id}.json"
        tar = work.with_suffix(".tar")
        # only rows whose clip was run (not bad rows, duplicates, opt-outs) take the clip's own status
        if row.status == "ok" or row.reason in reviewed:
            done = ClipStatus.from_dict(json.loads(work.read_text())) if work.exists() else None
            if done is not None and done.status == "rejected":  # the build rejected it whole; review put some back
                done.split, done.line = row.split, row.line
                rows.append(done)
                continue
            if not (done and done.status == "ok" and tar.exists()):
                raise FileNotFoundError(f"{tar} is missing: re-run the build to make clip {row.id} again")
            done.split, done.line = row.split, row.line
            row = done
            old = known.get(row.id)
            source = old.source if old else _sample_source(tar)
            src = Path(old.source_path) if old and old.source_path and Path(old.source_path).is_file() else None
            if src is None and source:
                clip = Clip(row.id, source, row.identity or row.id, row.line or 0)
                src = (find_in_mirror(clip, mirror) if mirror else None) or local_path(source, None)
            clips.append(QueueClip(row.id, row.identity or row.id, row.split, tar, source, src))
        rows.append(row)
    return rows, clips


def _sample_source(tar: Path) -> str | None:
    for sample in read_samples(tar):
        if "json" in sample:
            return json.loads(sample["json"]).get("source")
    return None


# --- the gate packing applies ------------------------------------------------------------------------------


@dataclass
class ReviewGate:
    """`keep(key, meta)` for pack_shards: drops rejected windows, and queued undecided ones unless included.

    It counts each clip's windows by outcome as packing goes, for clips.jsonl and the report.
    """

    accepted: set[str]
    rejected: set[str]
    queued: set[str]
    include_unreviewed: bool = False
    outcomes: dict[str, Counter] = field(default_factory=dict)
    rescued: dict[str, tuple[Path, set[str]]] = field(default_factory=dict)  # clip -> (rejected tar, accepted keys)
    _by_clip: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def extra(self, clip_tar: Path):
        """The clip's rejected windows a reviewer accepted (their samples, from its rejected-windows tar)."""
        found = self.rescued.get(clip_tar.stem)
        if found is None or not found[0].exists():
            return
        tar, keys = found
        for sample in read_samples(tar):
            if sample["__key__"] in keys:
                yield sample

    def __call__(self, key: str, meta: dict) -> bool:
        if key in self.rejected:
            outcome, keep = "rejected", False
        elif key in self.accepted:
            outcome, keep = "accepted", True
        elif key in self.queued:
            keep = self.include_unreviewed
            outcome = "unreviewed_included" if keep else "unreviewed_excluded"
        else:
            outcome, keep = "not_queued", True
        self.outcomes.setdefault(meta["clip_id"], Counter())[outcome] += 1
        return keep

    def annotate(self, rows: list[ClipStatus]) -> None:
        """Set each packed clip's windows_written to what the shards hold and its review counts.

        An ok clip none of whose windows is left becomes rejected (review_rejected / review_pending), so
        that `ok` keeps meaning "has samples in the shards".
        """
        for row in rows:
            if row.id not in self.outcomes:
                continue
            c = self.outcomes[row.id]
            if row.status != "ok":  # a clip the build rejected whole, whose rescued windows are now in the shards
                if not self.rescued.get(row.id) or not c["accepted"]:
                    continue
                row.status, row.reason = "ok", None
                row.detail = f"{c['accepted']} rejected windows put back by review ({row.detail})"
            row.review = {k: c[k] for k in ("accepted", "rejected", "unreviewed_excluded", "unreviewed_included")}
            kept = c["accepted"] + c["unreviewed_included"] + c["not_queued"]
            if kept != row.windows_written:
                row.detail += f"; {kept} in the shards after review"
            row.windows_written = kept
            if row.windows_written == 0:
                row.status = "rejected"
                pending = c["unreviewed_excluded"] > c["rejected"]
                row.reason = str(Reason.REVIEW_PENDING if pending else Reason.REVIEW_REJECTED)
                row.detail = "no window left after review: " + ", ".join(f"{k} {v}" for k, v in row.review.items())

    def clip_fingerprint(self, clip_id: str) -> str:
        """A digest of the decisions packing applies to one clip's windows (and the rescued ones it gets back):
        incremental packing rewrites only the shards of clips whose digest changed."""
        if self._by_clip is None:
            by_clip: dict[str, list[str]] = {}
            for name in ("accepted", "rejected", "queued"):
                for key in getattr(self, name):
                    by_clip.setdefault(key.rsplit("-", 1)[0], []).append(f"{name}:{key}")
            self._by_clip = {
                c: hashlib.sha1("\0".join(sorted(v)).encode()).hexdigest()[:16] for c, v in by_clip.items()
            }
        rescued = self.rescued.get(clip_id)
        extra = ""
        if rescued is not None:
            st = rescued[0].stat() if rescued[0].exists() else None
            extra = f"|{st and st.st_size}:{st and st.st_mtime_ns}|" + ",".join(sorted(rescued[1]))
        return f"{self._by_clip.get(clip_id, '-')}{extra}"

    def fingerprint(self) -> str:
        """A digest of the decisions packing applies: equal fingerprints pack the same samples."""
        digest = hashlib.sha1(f"{self.include_unreviewed}".encode())
        for name in ("accepted", "rejected", "queued"):
            digest.update(name.encode() + b"\0" + "\0".join(sorted(getattr(self, name))).encode())
        return digest.hexdigest()

    def totals(self) -> dict:
        total: Counter = Counter()
        for c in self.outcomes.values():
            total.update(c)
        return {
            "queued": len(self.queued),
            "accepted": total["accepted"],
            "rejected": total["rejected"],
            "unreviewed_excluded": total["unreviewed_excluded"],
            "unreviewed_included": total["unreviewed_included"],
            "not_queued": total["not_queued"],
        }


def prepare_review(plan) -> ReviewGate | None:
    """A build's curation step (pipeline.build.finish_build's `curate`): fill OUT's review queue from the ok
    clips (if the config says so); the gate its decisions make."""
    from ..clip import read_status

    ctx = plan.ctx
    if ctx.cfg.review.queue_on_build:
        ok = ((c, s) for c in plan.clips() if (s := read_status(ctx, c.clip_id)) and s.status == "ok")
        fill_queue(ctx.out, build_clips(ctx.out, ok, ctx.mirror, ctx.base_dir), ctx.cfg.review)
    return load_gate(ctx.out, ctx.cfg.review)


def load_gate(out: Path, cfg: ReviewConfig) -> ReviewGate | None:
    """The gate from OUT's review database; None when OUT has none (shards are packed as they are)."""
    if not db_path(out).exists():
        return None
    db = open_db(out)
    accepted, rejected, queued = db.outcome_sets()
    rescued: dict[str, tuple[Path, set[str]]] = {}
    for r in db.rescues():
        if r.key in accepted:
            rescued.setdefault(r.clip_id, (Path(out) / r.tar, set()))[1].add(r.key)
    return ReviewGate(accepted, rejected, queued, cfg.include_unreviewed, rescued=rescued)


def queue_out(
    out: Path,
    cfg: ReviewConfig,
    clips: list[str] | None = None,
    identities: list[str] | None = None,
    reviewer: str = "anonymous",
    mirror: Path | None = None,
    repair: bool = False,
) -> dict:
    """Fill OUT's queue from its build (no manifest needed), then queue every window of the given clips and
    identities. Unknown ones raise ValueError. `repair` recomputes every window's reasons (see fill_queue).
    Returns the fill's counts and the queue's progress."""
    with out_lock(out, "voiceface queue"):
        return _queue_out(Path(out), cfg, clips, identities, reviewer, mirror, repair)


def _queue_out(out, cfg, clips, identities, reviewer, mirror, repair=False) -> dict:
    _, ok = clips_in_out(Path(out), mirror)
    unknown = [c for c in clips or [] if c not in {q.clip_id for q in ok}]
    unknown += [i for i in identities or [] if i not in {q.identity for q in ok}]
    if unknown:
        raise ValueError(f"no ok clip or identity in {out} named {', '.join(map(repr, unknown))}")
    stats = fill_queue(Path(out), ok, cfg, repair=repair)
    db = open_db(Path(out))
    if clips or identities:
        stats["requested"] = len(db.request(reviewer, clips or [], identities or []))
    stats["progress"] = db.progress()
    return stats


# --- rejected windows back into the queue -----------------------------------------------------------------------


def queue_rejected(out: Path, reasons: list[str]) -> dict[str, int]:
    """Queue the windows the build rejected for any of `reasons` (`all`: every reason) that have a sample (a face
    was found), so a reviewer can put them back: an accepted one goes into the shards at the next publish.
    Returns {reason: windows queued}, plus `no_sample`: windows of those reasons rejected before a face was
    looked for (no crop, nothing to put back)."""
    with out_lock(out, "voiceface queue"):
        return _queue_rejected(Path(out), reasons)


def _queue_rejected(out: Path, reasons: list[str]) -> dict[str, int]:
    from ..clip import rejected_dir

    db = open_db(out)
    ids = {r["id"]: (i, r) for i, r in enumerate(map(json.loads, (out / "clips.jsonl").read_text().splitlines()))}
    counts: Counter[str] = Counter()
    rows: list[tuple[RescueRow, ItemRow, int]] = []
    stale = []
    known = {r.key: r for r in db.rescues()}
    for log in sorted(rejected_dir(out).glob("*.jsonl")):
        clip_id = log.stem
        if clip_id not in ids:
            continue  # a clip no longer in the build
        position, row = ids[clip_id]
        records = [json.loads(line) for line in log.read_text().splitlines()]
        wanted = [r for r in records if "all" in reasons or r["reason"] in reasons]
        counts["no_sample"] += sum(not r["sample"] for r in wanted)
        wanted = {r["key"]: r for r in wanted if r["sample"]}
        if not wanted:
            continue
        tar = log.with_suffix(".tar")
        st, rel = tar.stat(), os.path.relpath(tar.resolve(), out.resolve())
        index = member_index(tar)
        for sample in read_samples(tar):
            r = wanted.get(sample["__key__"])
            if r is None:
                continue
            meta = json.loads(sample["json"])
            members = {ext: list(where) for ext, where in index[r["key"]].items()}
            identity = row.get("identity") or meta["identity"]
            item = item_row(r["key"], clip_id, identity, r["window_index"], meta, members)
            seq = (RESCUE_SEQ_BASE + position) * 1_000_000 + r["window_index"]
            rows.append((RescueRow(r["key"], clip_id, r["reason"], rel, st.st_size, st.st_mtime_ns), item, seq))
            counts[r["reason"]] += 1
            old = known.get(r["key"])
            if old is not None and (old.tar_size, old.tar_mtime_ns) != (st.st_size, st.st_mtime_ns):
                stale.append(r["key"])
    if stale:
        db.drop_rescues(stale)
    db.add_rescues(rows)
    return dict(counts)
