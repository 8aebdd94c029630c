"""A manifest's rows on disk, so that a build of millions of rows holds none of them in memory.

Planning streams the manifest once into `OUT/.work/rows.sqlite` (a scratch file, rebuilt by every plan): each
row's line, kind (rejected, cached, new, redone), identity, split and the parsed Clip or the rejected status.
Duplicate ids are found through the same file, and a `split` given on some rows of an identity is spread to its
other rows with one UPDATE. Everything after planning (running, packing, clips.jsonl, the review queue) streams
the rows back in line order.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .records import Clip, ClipStatus

REJECTED, CACHED, NEW, REDONE = 0, 1, 2, 3
ROWS_FILE = "rows.sqlite"
_FETCH = 2000  # rows fetched from SQLite at a time


class SeenIds:
    """The clip ids met so far, on disk (`in` and `add`, like a set)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __contains__(self, clip_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (clip_id,)).fetchone() is not None

    def add(self, clip_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO ids VALUES (?)", (clip_id,))


class RowStore:
    """The rows of one manifest, in line order, with each clip's plan state."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            for p in (self.path, self.path.with_name(self.path.name + "-journal")):
                p.unlink(missing_ok=True)
        # a scratch file rebuilt by every plan: no journal, no fsync
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-8000")  # 8 MB of page cache, whatever the manifest's size
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS rows (line INTEGER PRIMARY KEY, id TEXT, state INTEGER, identity TEXT,
                                             split TEXT, youtube INTEGER, data TEXT, status TEXT);
            CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS overrides (identity TEXT, split TEXT, PRIMARY KEY (identity, split))
                WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            """
        )
        self.seen = SeenIds(self.db)
        self._pending: list[tuple] = []
        self._statuses: list[tuple] = []

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def add_clip(self, clip: Clip, state: int, status: ClipStatus | None = None) -> None:
        """A clip row; `status`: its recorded status when it is cached (read once, at planning)."""
        data = json.dumps(clip.to_dict(), separators=(",", ":"))
        st = None if status is None else json.dumps(status.to_dict(), separators=(",", ":"))
        self._pending.append((clip.line, clip.clip_id, state, clip.identity, clip.split, clip.youtube_id is not None,
                              data, st))  # fmt: skip
        if clip.split:
            self.db.execute("INSERT OR IGNORE INTO overrides VALUES (?, ?)", (clip.identity, clip.split))
        self._flush(False)

    def add_rejected(self, status: ClipStatus) -> None:
        data = json.dumps(status.to_dict(), separators=(",", ":"))
        self._pending.append((status.line or 0, status.id, REJECTED, status.identity, None, False, data, None))
        self._flush(False)

    def _flush(self, force: bool) -> None:
        if self._pending and (force or len(self._pending) >= _FETCH):
            self.db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._pending)
            self._pending.clear()

    def set_statuses(self, statuses: list[ClipStatus]) -> None:
        """Keep the statuses a batch of clips came back with, so the finish reads no status file."""
        rows = [(json.dumps(s.to_dict(), separators=(",", ":")), s.line) for s in statuses if s.line is not None]
        self.db.execute("BEGIN")  # one transaction, not one a row
        self.db.executemany("UPDATE rows SET status = ? WHERE line = ?", rows)
        self.db.execute("COMMIT")

    def finish(self) -> list[str]:
        """Spread split overrides to the identity's other rows; commit. Returns the warnings (identities put in
        several splits by the manifest)."""
        self._flush(True)
        warnings = [
            f"identity {identity!r} is put in several splits by the manifest: {sorted(splits.split(','))}"
            for identity, splits in self.db.execute(
                "SELECT identity, group_concat(split) FROM overrides GROUP BY identity HAVING count(*) > 1"
            )
        ]
        self.db.execute(
            "UPDATE rows SET split = (SELECT min(o.split) FROM overrides o WHERE o.identity = rows.identity) "
            "WHERE state != ? AND split IS NULL AND identity IN (SELECT identity FROM overrides)",
            (REJECTED,),
        )
        self.db.execute("COMMIT")
        return warnings

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def count(self, *states: int) -> int:
        marks = ",".join("?" * len(states))
        return self.db.execute(f"SELECT count(*) FROM rows WHERE state IN ({marks})", states).fetchone()[0]

    def any_youtube(self, *states: int) -> bool:
        marks = ",".join("?" * len(states))
        q = f"SELECT 1 FROM rows WHERE youtube AND state IN ({marks}) LIMIT 1"
        return self.db.execute(q, states).fetchone() is not None

    def _select(self, where: str, args: tuple) -> Iterator[tuple]:
        # a cursor of its own, read in chunks: other statements may run on the connection meanwhile
        cur = self.db.cursor()
        cur.execute(f"SELECT state, split, data, status FROM rows {where} ORDER BY line", args)
        while chunk := cur.fetchmany(_FETCH):
            yield from chunk

    def clips(self, *states: int) -> Iterator[tuple[Clip, int]]:
        """The clips in the given states (all clip states when none), in line order."""
        states = states or (CACHED, NEW, REDONE)
        marks = ",".join("?" * len(states))
        for state, split, data, _ in self._select(f"WHERE state IN ({marks})", states):
            d = json.loads(data)
            d["split"] = split
            yield Clip.from_dict(d), state

    def rows(self) -> Iterator[tuple[Clip | ClipStatus, ClipStatus | None]]:
        """Every row in line order: (the rejected status of a row that is not processed, None), or (the Clip, its
        status when it is known here: cached at planning or reported by its batch)."""
        for state, split, data, status in self._select("", ()):
            d = json.loads(data)
            if state == REJECTED:
                yield ClipStatus.from_dict(d), None
            else:
                d["split"] = split
                yield Clip.from_dict(d), None if status is None else ClipStatus.from_dict(json.loads(status))

    def rejected(self, limit: int) -> list[ClipStatus]:
        q = "SELECT data FROM rows WHERE state = ? ORDER BY line LIMIT ?"
        return [ClipStatus.from_dict(json.loads(d)) for (d,) in self.db.execute(q, (REJECTED, limit))]

    def close(self) -> None:
        self.db.close()
