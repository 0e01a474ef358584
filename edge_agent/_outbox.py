"""Store-and-forward outbox for hard samples (SQLite on disk).

A row is written before anything is published and deleted only when the
broker acknowledged the QoS 1 publish (PUBACK for its mid). Unsent rows
survive a restart and are sent again (the cloud deduplicates by the sample's
idempotency key). Above ``max_rows`` the oldest rows are dropped and counted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from edge_agent._stats import Stats

log = logging.getLogger("edge_agent.outbox")

# PUBACK reason codes after which resending cannot help: drop the row, count it.
FATAL_ACK_CODES = {0x87, 0x90, 0x95, 0x99, 0x83}


class Outbox:
    def __init__(self, path: Path, *, max_rows: int, stats: Stats) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.stats = stats
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.wake = threading.Event()

    def add(self, key: str, topic: str, payload: bytes) -> None:
        """Persist one message; drops the oldest rows beyond the cap (counted)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (key, topic, payload) VALUES (?, ?, ?)",
                (key, topic, payload),
            )
            n = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if n > self.max_rows:
                over = n - self.max_rows
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (over,),
                )
                self.stats.inc("outbox_dropped", over)
                log.warning("outbox full (%d rows): dropped the %d oldest", self.max_rows, over)
        self.stats.inc("outbox_added")
        self.wake.set()

    def pending(self, limit: int) -> list[tuple[int, str, bytes]]:
        """Rows not yet handed to the session, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?",
                (limit + len(self._inflight),),
            ).fetchall()
            out = [r for r in rows if r[0] not in self._inflight][:limit]
            self._inflight.update(r[0] for r in out)
            return out

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def acked(self, row_id: int, code: int) -> None:
        """PUBACK for a row: delete it (or release it for a retry on a transient refusal)."""
        with self._lock:
            self._inflight.discard(row_id)
            if code < 0x80:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self.stats.inc("hard_acked")
            elif code in FATAL_ACK_CODES:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self.stats.inc("hard_refused")
                log.error("broker refused hard sample row %d (reason 0x%x): dropped", row_id, code)
            else:
                self.stats.inc("hard_retry")
        self.wake.set()

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
