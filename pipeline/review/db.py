"""The review queue's database: SQLite in WAL mode (OUT/review/review.db), with an append-only history.

Tables:
  meta        key/value: the curate run waiting for the batch, the queue's last fill
  clips       each indexed clip tar (size + mtime, so a refill rescans only what changed) and its source file
  items       every kept window: metrics, why it is queued (if it is), its members' offsets in the clip tar
  embeddings  dlib vectors of the windows, for the identity outlier check
  actions     what reviewers did (decide, bulk, undo, requested, done), one row each; never updated or deleted
  decisions   one row per window an action touched (accept, reject, or the undo of an earlier row); ditto
  state       each decided window's standing decision, derived from `decisions` in the same transaction

A window's standing decision is its last accept/reject row that no undo row points at, so two reviewers
deciding the same window both stay in the history and the later one stands.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DECISIONS = ("accept", "reject")
STATUSES = ("all", "pending", "accepted", "rejected")
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS clips (
  clip_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, identity TEXT NOT NULL, split TEXT, source TEXT,
  source_path TEXT, tar TEXT NOT NULL, tar_size INTEGER, tar_mtime_ns INTEGER
);
CREATE TABLE IF NOT EXISTS items (
  key TEXT PRIMARY KEY, clip_id TEXT NOT NULL, identity TEXT NOT NULL, seq INTEGER NOT NULL,
  window_index INTEGER NOT NULL, queued INTEGER NOT NULL DEFAULT 0, requested INTEGER NOT NULL DEFAULT 0,
  reasons TEXT NOT NULL DEFAULT '[]', metrics TEXT NOT NULL DEFAULT '{}', meta TEXT NOT NULL DEFAULT '{}',
  members TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS items_queue ON items (queued, seq);
CREATE INDEX IF NOT EXISTS items_clip ON items (clip_id, seq);
CREATE INDEX IF NOT EXISTS items_identity ON items (identity, seq);
CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rescue (
  key TEXT PRIMARY KEY, clip_id TEXT NOT NULL, reason TEXT NOT NULL, tar TEXT NOT NULL, tar_size INTEGER,
  tar_mtime_ns INTEGER
);
CREATE TABLE IF NOT EXISTS actions (
  id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, target TEXT, decision TEXT,
  reviewer TEXT NOT NULL, at TEXT NOT NULL, undoes INTEGER, n INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS actions_reviewer ON actions (reviewer, id);
CREATE INDEX IF NOT EXISTS actions_undoes ON actions (undoes);
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY AUTOINCREMENT, action INTEGER NOT NULL, key TEXT NOT NULL,
  decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'undo')),
  reviewer TEXT NOT NULL, at TEXT NOT NULL, undoes INTEGER
);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions (key, id);
CREATE INDEX IF NOT EXISTS decisions_action ON decisions (action);
CREATE INDEX IF NOT EXISTS decisions_undoes ON decisions (undoes);
CREATE TABLE IF NOT EXISTS state (
  key TEXT PRIMARY KEY, decision TEXT NOT NULL, reviewer TEXT NOT NULL, at TEXT NOT NULL, decision_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS state_reviewer ON state (reviewer);
CREATE TRIGGER IF NOT EXISTS decisions_append_only_u BEFORE UPDATE ON decisions
  BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_d BEFORE DELETE ON decisions
  BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS actions_append_only_u BEFORE UPDATE ON actions
  BEGIN SELECT RAISE(ABORT, 'actions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS actions_append_only_d BEFORE DELETE ON actions
  BEGIN SELECT RAISE(ABORT, 'actions are append-only'); END;
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ClipRow:
    clip_id: str
    seq: int  # the clip's position in the manifest: cards follow it
    identity: str
    split: str | None
    source: str | None  # as written in the manifest
    source_path: str | None  # a local file for the context frame and audio; None when it was downloaded
    tar: str  # relative to OUT
    tar_size: int
    tar_mtime_ns: int


@dataclass(frozen=True)
class ItemRow:
    key: str
    clip_id: str
    identity: str
    window_index: int
    metrics: dict
    meta: dict  # the sample json fields a card shows
    members: dict  # ext -> [offset, size] in the clip tar


@dataclass(frozen=True)
class RescueRow:
    """A window the build rejected, queued so a reviewer can put it back: its sample lies in the clip's
    rejected-windows tar (OUT/.work/rejected/<clip>.tar), not in the clip tar."""

    key: str
    clip_id: str
    reason: str  # the build's rejection reason
    tar: str  # relative to OUT
    tar_size: int
    tar_mtime_ns: int


RESCUE_PREFIX = "rejected:"  # a rescue item's queue reason: "rejected:<the build's reason>"


@dataclass(frozen=True)
class Filters:
    status: str = "all"  # all | pending | accepted | rejected
    reason: str | None = None
    clip: str | None = None
    identity: str | None = None

    def where(self) -> tuple[str, list]:
        sql, args = ["i.queued = 1"], []
        if self.status == "pending":
            sql.append("s.key IS NULL")
        elif self.status in ("accepted", "rejected"):
            sql.append("s.decision = ?")
            args.append({"accepted": "accept", "rejected": "reject"}[self.status])
        if self.reason:
            sql.append("EXISTS (SELECT 1 FROM json_each(i.reasons) WHERE value = ?)")
            args.append(self.reason)
        if self.clip:
            sql.append("i.clip_id = ?")
            args.append(self.clip)
        if self.identity:
            sql.append("i.identity = ?")
            args.append(self.identity)
        return " AND ".join(sql), args


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    total: int  # items that match the filters
    number: int  # 1-based
    has_next: bool


class ReviewDB:
    """One SQLite file; every method opens its own connection, so threads and processes can share it."""

    def __init__(self, path: Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s  # how long a writer waits for another's transaction (busy timeout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self.connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; persists in the file
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: IMMEDIATE takes the write lock up front, so concurrent writers queue, never fail."""
        with closing(self.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _using(self, conn: sqlite3.Connection | None, write: bool = True) -> Iterator[sqlite3.Connection]:
        """The caller's connection (its transaction), or a new one: a write transaction, or a plain reader."""
        if conn is not None:
            yield conn
        elif write:
            with self.write() as conn:
                yield conn
        else:
            with closing(self.connect()) as conn:
                yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        with closing(self.connect()) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def journal_mode(self) -> str:
        with closing(self.connect()) as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    # --- meta -------------------------------------------------------------------------------------------

    def get_meta(self, k: str) -> str | None:
        with closing(self.connect()) as conn:
            row = conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return row[0] if row else None

    def set_meta(self, k: str, v: str | None, conn: sqlite3.Connection | None = None) -> None:
        with self._using(conn) as conn:
            if v is None:
                conn.execute("DELETE FROM meta WHERE k = ?", (k,))
            else:
                conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (k, v))

    # --- the index, filled from clip tars ---------------------------------------------------------------

    def clips(self, conn: sqlite3.Connection | None = None) -> dict[str, ClipRow]:
        with self._using(conn, write=False) as conn:
            return {r["clip_id"]: ClipRow(**dict(r)) for r in conn.execute("SELECT * FROM clips")}

    def clip(self, clip_id: str) -> ClipRow | None:
        with closing(self.connect()) as conn:
            r = conn.execute("SELECT * FROM clips WHERE clip_id = ?", (clip_id,)).fetchone()
        return ClipRow(**dict(r)) if r else None

    def sync_clips(
        self,
        keep: Iterable[ClipRow],
        rescanned: Iterable[tuple[ClipRow, list[ItemRow], dict[str, bytes]]],
        removed: Iterable[str],
        conn: sqlite3.Connection | None = None,
    ) -> None:
        """Record clip rows, replace the items of rescanned clips (requested flags stay), drop removed clips.
        Inside the caller's transaction when given its connection."""
        with self._using(conn) as conn:
            for c in keep:
                self._put_clip(conn, c)
                conn.execute(
                    "UPDATE items SET seq = ? * 1000000 + window_index, identity = ? WHERE clip_id = ?",
                    (c.seq, c.identity, c.clip_id),
                )
            for c, items, vecs in rescanned:
                self._put_clip(conn, c)
                keys = [i.key for i in items]
                old = {
                    r[0]
                    for r in conn.execute(
                        "SELECT key FROM items WHERE clip_id = ? AND key NOT IN (SELECT key FROM rescue)", (c.clip_id,)
                    )
                }
                gone = old - set(keys)
                conn.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in gone])
                conn.executemany("DELETE FROM embeddings WHERE key = ?", [(k,) for k in gone])
                conn.executemany(
                    "INSERT INTO items (key, clip_id, identity, seq, window_index, metrics, meta, members) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET clip_id = excluded.clip_id, "
                    "identity = excluded.identity, seq = excluded.seq, window_index = excluded.window_index, "
                    "metrics = excluded.metrics, meta = excluded.meta, members = excluded.members",
                    [
                        (i.key, i.clip_id, i.identity, c.seq * 1_000_000 + i.window_index, i.window_index,
                         json.dumps(i.metrics), json.dumps(i.meta), json.dumps(i.members))
                        for i in items
                    ],
                )  # fmt: skip
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)", list(vecs.items()))
            for clip_id in removed:
                conn.execute(
                    "DELETE FROM embeddings WHERE key IN (SELECT key FROM items WHERE clip_id = ?)", (clip_id,)
                )
                conn.execute("DELETE FROM items WHERE clip_id = ? AND key NOT IN (SELECT key FROM rescue)", (clip_id,))
                conn.execute("DELETE FROM clips WHERE clip_id = ?", (clip_id,))

    @staticmethod
    def _put_clip(conn: sqlite3.Connection, c: ClipRow) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (c.clip_id, c.seq, c.identity, c.split, c.source, c.source_path, c.tar, c.tar_size, c.tar_mtime_ns),
        )

    def embeddings_of(self, identity: str, conn: sqlite3.Connection | None = None) -> list[tuple[str, bytes]]:
        with self._using(conn, write=False) as conn:
            return conn.execute(
                "SELECT e.key, e.vec FROM items i JOIN embeddings e ON e.key = i.key WHERE i.identity = ? "
                "ORDER BY i.seq",
                (identity,),
            ).fetchall()

    def scan_items(self, conn: sqlite3.Connection | None = None) -> list[sqlite3.Row]:
        """Every item's key, identity, metrics, flags and whether it has any history (for the queue checks)."""
        with self._using(conn, write=False) as conn:
            return conn.execute(
                "SELECT i.key, i.identity, i.metrics, i.reasons, i.queued, i.requested, "
                "EXISTS (SELECT 1 FROM decisions d WHERE d.key = i.key) AS decided FROM items i "
                "WHERE i.key NOT IN (SELECT key FROM rescue)"
            ).fetchall()

    def update_items(self, rows: Iterable[tuple[str, str, int, str]], conn: sqlite3.Connection | None = None) -> None:
        """(metrics json, reasons json, queued, key) rows."""
        with self._using(conn) as conn:
            conn.executemany("UPDATE items SET metrics = ?, reasons = ?, queued = ? WHERE key = ?", list(rows))

    def keys_of(self, conn: sqlite3.Connection, clip: str | None = None, identity: str | None = None) -> list[str]:
        if clip is not None:
            return [r[0] for r in conn.execute("SELECT key FROM items WHERE clip_id = ? ORDER BY seq", (clip,))]
        return [r[0] for r in conn.execute("SELECT key FROM items WHERE identity = ? ORDER BY seq", (identity,))]

    def request(self, reviewer: str, clips: Iterable[str] = (), identities: Iterable[str] = ()) -> list[str]:
        """Queue every window of these clips and identities (reason `requested`); returns the keys."""
        with self.write() as conn:
            keys: list[str] = []
            for c in clips:
                keys += self.keys_of(conn, clip=c)
            for i in identities:
                keys += self.keys_of(conn, identity=i)
            self._request(conn, keys)
            targets = [f"clip:{c}" for c in clips] + [f"identity:{i}" for i in identities]
            conn.execute(
                "INSERT INTO actions (kind, target, reviewer, at, n) VALUES ('requested', ?, ?, ?, ?)",
                (" ".join(targets), reviewer, now(), len(keys)),
            )
        return keys

    @staticmethod
    def _request(conn: sqlite3.Connection, keys: list[str]) -> None:
        conn.executemany(
            "UPDATE items SET requested = 1, queued = 1, reasons = CASE WHEN EXISTS "
            "(SELECT 1 FROM json_each(reasons) WHERE value = 'requested') THEN reasons "
            "ELSE json_insert(reasons, '$[#]', 'requested') END WHERE key = ?",
            [(k,) for k in keys],
        )

    # --- decisions ---------------------------------------------------------------------------------------

    def decide(
        self, keys: list[str], decision: str, reviewer: str, kind: str = "decide", target: str | None = None
    ) -> int:
        """Append one action and a decision row per key; returns the action id. Unknown keys raise KeyError."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
        with self.write() as conn:
            return self._decide(conn, keys, decision, reviewer, kind, target)

    def decide_group(self, decision: str, reviewer: str, clip: str | None = None, identity: str | None = None):
        """Decide every window of a clip or an identity at once (queuing those not queued); (action id, keys)."""
        if (clip is None) == (identity is None):
            raise ValueError("give a clip or an identity")
        with self.write() as conn:
            keys = self.keys_of(conn, clip=clip, identity=identity)
            if not keys:
                raise KeyError(clip if clip is not None else identity)
            self._request(conn, [k for k in keys if not self._queued(conn, k)])
            target = f"clip:{clip}" if clip is not None else f"identity:{identity}"
            return self._decide(conn, keys, decision, reviewer, "bulk", target), keys

    @staticmethod
    def _queued(conn: sqlite3.Connection, key: str) -> bool:
        return bool(conn.execute("SELECT queued FROM items WHERE key = ?", (key,)).fetchone()[0])

    def _decide(self, conn, keys, decision, reviewer, kind, target) -> int:
        for k in keys:
            if conn.execute("SELECT 1 FROM items WHERE key = ?", (k,)).fetchone() is None:
                raise KeyError(k)
        at = now()
        cur = conn.execute(
            "INSERT INTO actions (kind, target, decision, reviewer, at, n) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, target or (keys[0] if len(keys) == 1 else None), decision, reviewer, at, len(keys)),
        )
        action = cur.lastrowid
        conn.executemany(
            "INSERT INTO decisions (action, key, decision, reviewer, at) VALUES (?, ?, ?, ?, ?)",
            [(action, k, decision, reviewer, at) for k in keys],
        )
        self._restate(conn, keys)
        return action  # type: ignore[return-value]

    def undo(self, reviewer: str) -> tuple[dict | None, list[str]]:
        """Revert this reviewer's last decision or bulk action not yet undone, by appending undo rows.

        Returns (the undone action, its keys); (None, []) when there is nothing to undo.
        """
        with self.write() as conn:
            row = conn.execute(
                "SELECT * FROM actions a WHERE reviewer = ? AND kind IN ('decide', 'bulk') "
                "AND NOT EXISTS (SELECT 1 FROM actions u WHERE u.undoes = a.id) ORDER BY id DESC LIMIT 1",
                (reviewer,),
            ).fetchone()
            if row is None:
                return None, []
            at = now()
            targets = conn.execute(
                "SELECT id, key FROM decisions WHERE action = ? ORDER BY id", (row["id"],)
            ).fetchall()
            cur = conn.execute(
                "INSERT INTO actions (kind, target, reviewer, at, undoes, n) VALUES ('undo', ?, ?, ?, ?, ?)",
                (row["target"], reviewer, at, row["id"], len(targets)),
            )
            conn.executemany(
                "INSERT INTO decisions (action, key, decision, reviewer, at, undoes) VALUES (?, ?, 'undo', ?, ?, ?)",
                [(cur.lastrowid, t["key"], reviewer, at, t["id"]) for t in targets],
            )
            keys = [t["key"] for t in targets]
            self._restate(conn, keys)
            return dict(row), keys

    @staticmethod
    def _restate(conn: sqlite3.Connection, keys: Iterable[str]) -> None:
        for k in dict.fromkeys(keys):
            cur = conn.execute(
                "SELECT id, decision, reviewer, at FROM decisions d WHERE key = ? AND decision != 'undo' "
                "AND NOT EXISTS (SELECT 1 FROM decisions u WHERE u.undoes = d.id) ORDER BY id DESC LIMIT 1",
                (k,),
            ).fetchone()
            if cur is None:
                conn.execute("DELETE FROM state WHERE key = ?", (k,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?)",
                    (k, cur["decision"], cur["reviewer"], cur["at"], cur["id"]),
                )

    def rebuild_state(self) -> None:
        """Recompute `state` from the history (it is only a cache of it)."""
        with self.write() as conn:
            conn.execute("DELETE FROM state")
            self._restate(conn, [r[0] for r in conn.execute("SELECT DISTINCT key FROM decisions")])

    def record(self, kind: str, reviewer: str, target: str | None = None) -> int:
        """An action with no decision rows (e.g. `done`: a reviewer marked the batch done)."""
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO actions (kind, target, reviewer, at) VALUES (?, ?, ?, ?)", (kind, target, reviewer, now())
            )
            return cur.lastrowid  # type: ignore[return-value]

    # --- reading ----------------------------------------------------------------------------------------

    def states(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(keys)
        with closing(self.connect()) as conn:
            out = {}
            for lo in range(0, len(keys), 500):
                chunk = keys[lo : lo + 500]
                q = f"SELECT * FROM state WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({r["key"]: dict(r) for r in conn.execute(q, chunk)})
            return out

    def history(self, keys: list[str]) -> dict[str, list[dict]]:
        if not keys:
            return {}
        with closing(self.connect()) as conn:
            q = (
                "SELECT key, decision, reviewer, at, undoes FROM decisions "
                f"WHERE key IN ({','.join('?' * len(keys))}) ORDER BY id"
            )
            out: dict[str, list[dict]] = {}
            for r in conn.execute(q, keys):
                out.setdefault(r["key"], []).append(dict(r))
            return out

    def actions(self) -> list[dict]:
        with closing(self.connect()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM actions ORDER BY id")]

    def decisions(self) -> list[dict]:
        with closing(self.connect()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY id")]

    def overridden(self, reviewer: str) -> list[dict]:
        """Windows whose standing decision is another reviewer's and differs from the one `reviewer` made."""
        with closing(self.connect()) as conn:
            rows = conn.execute(
                "SELECT s.key, s.reviewer, s.decision, s.at FROM state s WHERE s.reviewer != ? AND EXISTS ("
                "SELECT 1 FROM decisions d WHERE d.key = s.key AND d.reviewer = ? AND d.decision != 'undo' "
                "AND d.decision != s.decision) ORDER BY s.at DESC LIMIT 200",
                (reviewer, reviewer),
            ).fetchall()
        return [dict(r) for r in rows]

    def progress(self) -> dict:
        """Queued, reviewed and remaining windows, and each reviewer's standing decisions."""
        with self.read() as conn:
            queued = conn.execute("SELECT COUNT(*) FROM items WHERE queued = 1").fetchone()[0]
            rows = conn.execute(
                "SELECT s.reviewer, s.decision, COUNT(*) FROM state s JOIN items i ON i.key = s.key "
                "WHERE i.queued = 1 GROUP BY s.reviewer, s.decision ORDER BY s.reviewer"
            ).fetchall()
        by: dict[str, dict[str, int]] = {}
        for reviewer, decision, n in rows:
            by.setdefault(reviewer, {"accept": 0, "reject": 0})[decision] = n
        accepted = sum(v["accept"] for v in by.values())
        rejected = sum(v["reject"] for v in by.values())
        return {
            "queued": queued,
            "reviewed": accepted + rejected,
            "remaining": queued - accepted - rejected,
            "accepted": accepted,
            "rejected": rejected,
            "reviewers": by,
        }

    def page(self, filters: Filters, size: int, number: int = 1, after: int | None = None) -> Page:
        """Queued items (with their standing decision) in queue order: page `number`, or the `size` items that
        follow queue position `after`. The latter is how "next" works: deciding items under a filter such as
        `pending` removes them from it, and an offset would then skip as many undecided ones."""
        where, args = filters.where()
        cols = (
            "SELECT i.key, i.seq, i.clip_id, i.identity, i.window_index, i.reasons, i.metrics, i.meta, "
            "s.decision, s.reviewer AS decided_by, s.at AS decided_at, c.source_path IS NOT NULL AS has_source "
            "FROM items i LEFT JOIN state s ON s.key = i.key LEFT JOIN clips c ON c.clip_id = i.clip_id "
        )
        count = f"SELECT COUNT(*) FROM items i LEFT JOIN state s ON s.key = i.key WHERE {where}"
        with self.read() as conn:
            total = conn.execute(count, args).fetchone()[0]
            if after is not None:
                number = conn.execute(f"{count} AND i.seq <= ?", [*args, after]).fetchone()[0] // size + 1
                rows = conn.execute(
                    f"{cols} WHERE {where} AND i.seq > ? ORDER BY i.seq LIMIT ?", [*args, after, size]
                ).fetchall()
            else:
                number = max(1, number)
                rows = conn.execute(
                    f"{cols} WHERE {where} ORDER BY i.seq LIMIT ? OFFSET ?", [*args, size, (number - 1) * size]
                ).fetchall()
            more = bool(rows) and conn.execute(f"{count} AND i.seq > ?", [*args, rows[-1]["seq"]]).fetchone()[0] > 0
        return Page([dict(r) for r in rows], total, number, more)

    def first_pending_page(self, filters: Filters, size: int) -> int:
        """The page (1-based) holding the first undecided item under these filters; 1 when there is none."""
        where, args = filters.where()
        with self.read() as conn:
            row = conn.execute(
                f"SELECT i.seq FROM items i LEFT JOIN state s ON s.key = i.key WHERE {where} AND s.key IS NULL "
                "ORDER BY i.seq LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return 1
            before = conn.execute(
                f"SELECT COUNT(*) FROM items i LEFT JOIN state s ON s.key = i.key WHERE {where} AND i.seq < ?",
                [*args, row[0]],
            ).fetchone()[0]
        return before // size + 1

    def reason_counts(self) -> dict[str, int]:
        with closing(self.connect()) as conn:
            rows = conn.execute(
                "SELECT j.value, COUNT(*) FROM items i, json_each(i.reasons) j WHERE i.queued = 1 "
                "GROUP BY j.value ORDER BY 2 DESC"
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def item(self, key: str) -> dict | None:
        with closing(self.connect()) as conn:
            r = conn.execute(
                "SELECT i.*, COALESCE(r.tar, c.tar) AS tar, c.source_path, COALESCE(r.tar_size, c.tar_size) AS "
                "tar_size, COALESCE(r.tar_mtime_ns, c.tar_mtime_ns) AS tar_mtime_ns, r.key IS NOT NULL AS rescue "
                "FROM items i LEFT JOIN clips c ON c.clip_id = i.clip_id LEFT JOIN rescue r ON r.key = i.key "
                "WHERE i.key = ?",
                (key,),
            ).fetchone()
        return dict(r) if r else None

    def window_members(self, clip_id: str, lo: int, hi: int, rescue: bool = False) -> dict[int, dict]:
        """window_index -> members of a clip's windows in [lo, hi] (the neighbours for context audio), of its
        kept windows (in the clip tar) or of its rescue items (in its rejected-windows tar)."""
        with closing(self.connect()) as conn:
            rows = conn.execute(
                "SELECT window_index, members FROM items WHERE clip_id = ? AND window_index BETWEEN ? AND ? "
                "AND (key IN (SELECT key FROM rescue)) = ?",
                (clip_id, lo, hi, int(rescue)),
            ).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def add_rescues(self, rows: list[tuple[RescueRow, ItemRow, int]]) -> int:
        """Queue rejected windows (rescue row, item, queue position) in one transaction; returns how many were new.
        One already queued keeps its decisions."""
        with self.write() as conn:
            known = {r[0] for r in conn.execute("SELECT key FROM rescue")}
            new = [(r, i, seq) for r, i, seq in rows if r.key not in known]
            conn.executemany(
                "INSERT OR REPLACE INTO rescue VALUES (?, ?, ?, ?, ?, ?)",
                [(r.key, r.clip_id, r.reason, r.tar, r.tar_size, r.tar_mtime_ns) for r, _, _ in rows],
            )
            conn.executemany(
                "INSERT INTO items (key, clip_id, identity, seq, window_index, queued, reasons, metrics, meta, "
                "members) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "members = excluded.members, metrics = excluded.metrics, meta = excluded.meta, queued = 1",
                [
                    (i.key, i.clip_id, i.identity, seq, i.window_index, json.dumps([RESCUE_PREFIX + r.reason]),
                     json.dumps(i.metrics), json.dumps(i.meta), json.dumps(i.members))
                    for r, i, seq in rows
                ],
            )  # fmt: skip
        return len(new)

    def rescues(self) -> list[RescueRow]:
        with closing(self.connect()) as conn:
            return [RescueRow(**dict(r)) for r in conn.execute("SELECT * FROM rescue ORDER BY key")]

    def drop_rescues(self, keys: list[str]) -> None:
        """Forget rescue items whose rejected-windows tar changed (the clip was made again); history stays."""
        with self.write() as conn:
            conn.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in keys])
            conn.executemany("DELETE FROM rescue WHERE key = ?", [(k,) for k in keys])

    def outcome_sets(self) -> tuple[set[str], set[str], set[str]]:
        """(accepted, rejected, queued) keys, for packing shards."""
        with self.read() as conn:
            accepted = {r[0] for r in conn.execute("SELECT key FROM state WHERE decision = 'accept'")}
            rejected = {r[0] for r in conn.execute("SELECT key FROM state WHERE decision = 'reject'")}
            queued = {r[0] for r in conn.execute("SELECT key FROM items WHERE queued = 1")}
        return accepted, rejected, queued
