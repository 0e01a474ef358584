"""Store-and-forward outbox for hard samples (SQLite on disk).

A row is written before anything is published and is deleted only when the
cloud's ``HardSampleReceipt`` names its idempotency key, as stored or as
rejected. A broker's PUBACK is not enough: Mosquitto acknowledges a publish
before it persists it (a SIGKILLed broker loses acknowledged messages) and,
after a restart, answers 0x10 "no matching subscribers" until the ingest has
subscribed again.

Row lifecycle (:class:`RowState`, allowed moves in :data:`ROW_TRANSITIONS`)::

    queued --publish--> sending --PUBACK ok--> sent --receipt--> (deleted)
      ^                    |                    |
      |  PUBACK 0x10/>=0x80 (backoff)           |
      +--------------------+                    |
      +---- no receipt within the timeout ------+  (re-sent, same key)

Any state may end in a deletion: a receipt (stored or rejected), or the size
cap (oldest rows first, counted in ``outbox_dropped``). A stale PUBACK (for an
earlier attempt of a row that was re-sent since) is ignored. On open, rows left
``sending`` or ``sent`` by a previous process go back to ``queued``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edge_agent._stats import Stats

log = logging.getLogger("edge_agent.outbox")

#: PUBACK reason code "no matching subscribers": the broker took the message but
#: no one will get it (after a Mosquitto restart, shared subscriptions are gone)
NO_MATCHING_SUBSCRIBERS = 0x10


class RowState(str, Enum):
    """Where an outbox row stands (a deleted row is gone from the table)."""

    QUEUED = "queued"  # waiting to be published (maybe after a backoff)
    SENDING = "sending"  # handed to the MQTT session, no PUBACK yet
    SENT = "sent"  # the broker took it (PUBACK), waiting for the cloud's receipt


ROW_TRANSITIONS: dict[RowState, frozenset[RowState]] = {
    RowState.QUEUED: frozenset({RowState.SENDING}),
    RowState.SENDING: frozenset({RowState.SENT, RowState.QUEUED}),
    RowState.SENT: frozenset({RowState.QUEUED}),
}


def puback_accepted(code: int) -> bool:
    """A PUBACK that says the message reached someone (not 0x10, not a failure)."""
    return code < 0x80 and code != NO_MATCHING_SUBSCRIBERS


@dataclass(frozen=True)
class OutboxRow:
    id: int
    key: str
    topic: str
    payload: bytes
    attempt: int  # 1 for the first publish; PUBACKs of other attempts are stale


_COLUMNS = {
    "state": "TEXT NOT NULL DEFAULT 'queued'",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "failures": "INTEGER NOT NULL DEFAULT 0",
    "next_at": "REAL NOT NULL DEFAULT 0",
    "published_at": "REAL",
    "sent_at": "REAL",
    "created_at": "REAL",  # wall clock (survives restarts); NULL in rows of older agents
}
_REASON_RE = re.compile(r"[^a-z0-9_]+")


class Outbox:
    """The SQLite outbox. Thread-safe; times are the caller's clock (monotonic)."""

    def __init__(self, path: Path, *, max_rows: int, stats: Stats) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.stats = stats
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " key TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        for name, decl in _COLUMNS.items():  # outboxes written by older agents
            if name not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, id)")
        # a previous process's publishes and PUBACKs prove nothing now: send again
        n = self._db.execute(
            "UPDATE outbox SET state = 'queued', next_at = 0, failures = 0,"
            " published_at = NULL, sent_at = NULL WHERE state != 'queued'"
        ).rowcount
        # times are the previous process's monotonic clock: meaningless now
        self._db.execute("UPDATE outbox SET next_at = 0, failures = 0 WHERE next_at != 0")
        if n:
            self.stats.inc("outbox_requeued_on_open", n)
            log.info("outbox: %d rows sent before a restart are queued again", n)
        self.wake = threading.Event()

    # -- writing -----------------------------------------------------------
    def add(self, key: str, topic: str, payload: bytes) -> None:
        """Persist one message; drops the oldest rows beyond the cap (counted)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (key, topic, payload, created_at)"
                " VALUES (?, ?, ?, ?)",
                (key, topic, payload, time.time()),
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

    def due(
        self,
        limit: int,
        now: float,
        *,
        admit: Callable[[int, int, int], bool] | None = None,
    ) -> list[OutboxRow]:
        """Up to ``limit`` queued rows whose backoff has passed, oldest first, now ``sending``.

        ``admit(row_id, attempt, payload_bytes)`` may hold a row back (it stays queued)."""
        if limit <= 0:
            return []
        where = "state = 'queued' AND next_at <= ?"
        with self._lock:
            if admit is None:
                heads = self._db.execute(
                    f"SELECT id, attempts FROM outbox WHERE {where} ORDER BY id LIMIT ?",
                    (now, limit),
                ).fetchall()
            else:
                heads = []
                cur = self._db.execute(
                    f"SELECT id, attempts, length(payload) FROM outbox WHERE {where} ORDER BY id",
                    (now,),
                )
                for row_id, attempts, size in cur:
                    if admit(row_id, attempts + 1, size):
                        heads.append((row_id, attempts))
                        if len(heads) >= limit:
                            break
                cur.close()
            if not heads:
                return []
            rows = []
            for row_id, attempts in heads:
                key, topic, payload = self._db.execute(
                    "SELECT key, topic, payload FROM outbox WHERE id = ?", (row_id,)
                ).fetchone()
                rows.append(OutboxRow(row_id, key, topic, payload, attempts + 1))
            self._db.executemany(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1,"
                " published_at = ? WHERE id = ?",
                [(now, r.id) for r in rows],
            )
        return rows

    def acked(
        self, row_id: int, attempt: int, code: int, now: float, backoff: tuple[float, float]
    ) -> float | None:
        """The PUBACK of ``attempt`` of a row. Accepted: the row is ``sent``.
        0x10 or a failure code: back to ``queued`` after a backoff
        (``retry_min_s * 2**(failures-1)``, at most ``retry_max_s``), which is
        returned; ``None`` otherwise (also for a stale or unknown row)."""
        with self._lock:
            row = self._db.execute(
                "SELECT state, attempts, failures FROM outbox WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None or row[0] != RowState.SENDING.value or row[1] != attempt:
                self.stats.inc("hard_ack_stale")  # receipt came first, dropped, or re-sent
                return None
            if puback_accepted(code):
                self._db.execute(
                    "UPDATE outbox SET state = 'sent', sent_at = ?, failures = 0 WHERE id = ?",
                    (now, row_id),
                )
                self.stats.inc("hard_acked")
                return None
            failures = row[2] + 1
            lo, hi = backoff
            delay = min(hi, lo * 2 ** min(failures - 1, 30))
            self._db.execute(
                "UPDATE outbox SET state = 'queued', failures = ?, next_at = ?,"
                " published_at = NULL WHERE id = ?",
                (failures, now + delay, row_id),
            )
        self.stats.inc("hard_requeued")
        if code == NO_MATCHING_SUBSCRIBERS:
            self.stats.inc("hard_no_subscribers")
        log.info("hard sample row %d: PUBACK 0x%02x, queued again in %.1fs", row_id, code, delay)
        self.wake.set()
        return delay

    def expire(self, now: float, timeout_s: float) -> int:
        """Rows without a receipt (``sent``) or a PUBACK (``sending``) for the
        timeout go back to ``queued`` to be re-sent with the same key. The
        timeout doubles with each attempt, up to 16 times ``timeout_s``."""
        with self._lock:
            n = self._db.execute(
                "UPDATE outbox SET state = 'queued', next_at = 0, published_at = NULL,"
                " sent_at = NULL WHERE (state = 'sent' AND sent_at IS NOT NULL"
                "   AND sent_at + ? * (1 << min(max(attempts - 1, 0), 4)) <= ?)"
                " OR (state = 'sending' AND published_at IS NOT NULL"
                "   AND published_at + ? * (1 << min(max(attempts - 1, 0), 4)) <= ?)",
                (timeout_s, now, timeout_s, now),
            ).rowcount
        if n:
            self.stats.inc("hard_resent", n)
            log.info("%d hard samples without a receipt in time: sending them again", n)
        return n

    def restart_timers(self, now: float) -> None:
        """After a reconnect: paho re-sends what it had in flight and the broker
        delivers receipts it queued for us, so the timeouts start over."""
        with self._lock:
            self._db.execute("UPDATE outbox SET published_at = ? WHERE state = 'sending'", (now,))
            self._db.execute("UPDATE outbox SET sent_at = ? WHERE state = 'sent'", (now,))

    def receipt(self, stored: Iterable[str], rejected: Mapping[str, str]) -> tuple[int, int]:
        """Delete the rows a receipt names; returns (stored, rejected) rows deleted.

        A rejected sample will never be accepted: it is deleted, counted in
        ``hard_rejected`` and ``hard_rejected.<reason>`` and logged."""
        n_stored = n_rejected = unknown = 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for key in stored:
                    if self._db.execute("DELETE FROM outbox WHERE key = ?", (key,)).rowcount:
                        n_stored += 1
                    else:
                        unknown += 1
                gone: list[tuple[str, str]] = []
                for key, reason in rejected.items():
                    if self._db.execute("DELETE FROM outbox WHERE key = ?", (key,)).rowcount:
                        gone.append((key, reason))
                    else:
                        unknown += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for key, reason in gone:
            n_rejected += 1
            code = _REASON_RE.sub("_", reason.split(":", 1)[0].strip().lower())[:40] or "unknown"
            self.stats.inc(f"hard_rejected.{code}")
            log.warning("cloud rejected hard sample %s (dropped, not re-sent): %s", key, reason)
        self.stats.inc("hard_stored", n_stored)
        self.stats.inc("hard_rejected", n_rejected)
        self.stats.inc("hard_receipt_unknown", unknown)  # duplicates of earlier receipts
        if n_stored or n_rejected:
            self.wake.set()
        return n_stored, n_rejected

    # -- reading -----------------------------------------------------------
    def states(self) -> dict[RowState, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        out = dict.fromkeys(RowState, 0)
        out.update({RowState(s): n for s, n in rows})
        return out

    def inflight(self) -> int:
        """Rows handed to the session and not yet acknowledged by the broker."""
        return self.states()[RowState.SENDING]

    def unconfirmed(self) -> int:
        """Rows published and not yet named by a receipt (sending + sent)."""
        s = self.states()
        return s[RowState.SENDING] + s[RowState.SENT]

    def state_of(self, key: str) -> RowState | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM outbox WHERE key = ?", (key,)).fetchone()
        return RowState(row[0]) if row else None

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM outbox ORDER BY id")]

    def summary(self) -> tuple[dict[RowState, int], float | None]:
        """(rows per state, wall-clock creation time of the oldest row or None)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            oldest = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()[0]
        out = dict.fromkeys(RowState, 0)
        out.update({RowState(s): n for s, n in rows})
        return out, oldest

    def max_id(self) -> int:
        """The newest row id (0 when empty); ids only grow."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
