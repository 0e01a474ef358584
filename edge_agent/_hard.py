"""Hard samples: from model results into the outbox (:class:`HardSampler`:
selectors, rate limits, bandwidth budget, JPEG) and from the outbox to the
cloud (:class:`HardDelivery`: publish, PUBACK, receipts, re-sends).

Bandwidth budget: ``budget_bytes_per_hour`` is charged once per sample, when a
selector takes it (the base64 image size). Re-sends of the same sample (after a
refused PUBACK or a missing receipt) are not charged again: the budget bounds
how much new data the selectors produce, while re-sends are bounded separately
by ``receipt_window`` (samples published and not yet confirmed) and the receipt
timeout, which doubles with each attempt. Re-sends are counted in
``hard_resent`` / ``hard_requeued``.

Resend cap: ``resend_budget_bytes_per_hour`` bounds the bytes of re-sends
(attempt > 1) and of the backlog, i.e. rows already waiting when the session
(re)connected (an outage, or a restart). Samples selected while connected are
bounded by the selection budget and are not charged. A row the cap holds back
stays queued (in order, nothing dropped) and is counted once per hold in
``hard_resend_delayed``; charged bytes go to ``hard_resend_bytes``.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Protocol

import cv2
import numpy as np

from edge_agent._config import HardSampleConfig
from edge_agent._outbox import Outbox, OutboxRow, RowState, puback_accepted
from edge_agent._runtime import Result
from edge_agent._selectors import Budget, Observation, RateLimiter, Selector, build_selector
from edge_agent._stats import Stats
from edge_agent.protocol import (
    HardSample,
    HardSampleReceipt,
    Manifest,
    ProtocolError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger("edge_agent.hard")


class HardSampler:
    def __init__(self, cfg: HardSampleConfig, device: str, outbox: Outbox, stats: Stats) -> None:
        self.cfg = cfg
        self.device = device
        self.outbox = outbox
        self.stats = stats
        self.selectors: list[tuple[str, Selector, RateLimiter]] = [
            (s.kind, build_selector(s), RateLimiter(s.limits)) for s in cfg.selectors
        ]
        self.budget = Budget(cfg.budget_bytes_per_hour)

    def jpeg(self, frame: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        side = max(h, w)
        if side > self.cfg.max_image_side:
            f = self.cfg.max_image_side / side
            frame = cv2.resize(frame, (max(1, int(w * f)), max(1, int(h * f))))
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()

    def consider(
        self,
        *,
        stream: str,
        frame: np.ndarray,
        manifest: Manifest,
        result: Result,
        shadow: Result | None,
        centroids: np.ndarray | None,
    ) -> str | None:
        """Offer one frame to the selectors; returns the selector that took it, if any."""
        if not self.cfg.enabled:
            return None
        obs = Observation(
            result=result,
            threshold=manifest.postprocess.score_threshold,
            task=manifest.task.value,
            centroids=centroids,
            shadow=shadow,
        )
        for name, select, limiter in self.selectors:
            pick = select(obs)
            if pick is None:
                continue
            if not limiter.allow():
                self.stats.inc(f"hard_rate_limited.{name}")
                continue
            data = self.jpeg(frame)
            b64 = base64.b64encode(data).decode()
            if not self.budget.spend(len(b64)):
                self.stats.inc("hard_over_budget")
                return None
            score, reason = pick
            top = float(result.scores.max()) if result.scores.size else 0.0
            sample = HardSample(
                id=uuid.uuid4().hex,
                device=self.device,
                stream=stream,
                algorithm=manifest.id,
                model_version=manifest.version,
                selector=name,
                reason=reason,
                scores={"selector": float(score), "top": top},
                image_jpeg_b64=b64,
            )
            self.outbox.add(sample.id, Topics.hard(self.device), encode(sample))
            self.stats.inc(f"hard_selected.{name}")
            return name
        return None


class PublishSession(Protocol):
    """What :class:`HardDelivery` needs of the MQTT session (``_session.Session``)."""

    connected: threading.Event

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        on_ack: Callable[[int], None] | None = None,
    ) -> int: ...


class HardDelivery:
    """Publishes outbox rows and moves them through their lifecycle
    (``edge_agent._outbox``): PUBACK accepted -> ``sent``; PUBACK 0x10 or a
    failure -> ``queued`` again after a backoff (per row, and new publishes
    pause as well); a receipt deletes; no receipt within ``receipt_timeout_s``
    -> re-sent with the same idempotency key (the ingest de-duplicates).

    At most ``publish_window`` rows wait for a PUBACK and at most
    ``receipt_window`` for a receipt. :meth:`pump` is called by the agent's
    outbox thread; :meth:`on_receipt` by the session for the receipt topic.
    """

    def __init__(
        self,
        cfg: HardSampleConfig,
        device: str,
        outbox: Outbox,
        session: PublishSession,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.outbox = outbox
        self.session = session
        self.stats = stats
        self.clock = clock
        self.topic = Topics.hard_receipt(device)
        self._lock = threading.Lock()
        self._hold_until = 0.0  # no new publishes before (after a refused PUBACK)
        self._streak = 0  # refused rounds in a row
        cap = cfg.resend_budget_bytes_per_hour
        self.resend_cap = Budget(cap, clock, oversize=True) if cap else None
        self._backlog_mark = 0  # rows up to this id waited for the current connection
        self._held: set[int] = set()  # rows the resend cap is holding back

    @property
    def _backoff(self) -> tuple[float, float]:
        return (self.cfg.retry_min_s, self.cfg.retry_max_s)

    def pump(self) -> int:
        """Re-queue timed-out rows, then publish what the windows allow; returns
        how many rows were published."""
        if not self.session.connected.is_set():
            return 0
        now = self.clock()
        self.outbox.expire(now, self.cfg.receipt_timeout_s)
        with self._lock:
            if now < self._hold_until:
                return 0
        states = self.outbox.states()
        sending, sent = states[RowState.SENDING], states[RowState.SENT]
        free = min(self.cfg.publish_window - sending, self.cfg.receipt_window - sending - sent)
        rows = self._due(free, now)
        for row in rows:
            self.session.publish(
                row.topic, row.payload, qos=1, on_ack=partial(self._on_ack, row.id, row.attempt)
            )
            self.stats.inc("hard_published")
            if row.attempt > 1:
                self.stats.inc("hard_republished")
        return len(rows)

    def _due(self, free: int, now: float) -> list[OutboxRow]:
        """Rows to publish now: fresh ones freely, the others while the cap allows."""
        cap = self.resend_cap
        if cap is None:
            return self.outbox.due(free, now)
        mark = self._backlog_mark
        blocked = False

        def admit(row_id: int, attempt: int, size: int) -> bool:
            nonlocal blocked
            if attempt == 1 and row_id > mark:
                return True
            if not blocked and cap.spend(size):
                self._held.discard(row_id)
                self.stats.inc("hard_resend_bytes", size)
                return True
            blocked = True  # keep the order: no later re-send overtakes this one
            if row_id not in self._held:
                self._held.add(row_id)
                self.stats.inc("hard_resend_delayed")
            return False

        rows = self.outbox.due(free, now, admit=admit)
        if not blocked:
            self._held.clear()
        return rows

    def _on_ack(self, row_id: int, attempt: int, code: int) -> None:
        now = self.clock()
        delay = self.outbox.acked(row_id, attempt, code, now, self._backoff)
        with self._lock:
            if puback_accepted(code):
                self._streak = 0
            elif delay is not None and now >= self._hold_until:
                # first refusal of a round: hold every new publish, longer each round
                self._streak += 1
                lo, hi = self._backoff
                self._hold_until = now + min(hi, lo * 2 ** min(self._streak - 1, 30))
        self.outbox.wake.set()

    def on_connected(self) -> None:
        """(Re)connected: timeouts start over and any hold is lifted; what waits
        in the outbox now is backlog (under the resend cap)."""
        self.outbox.restart_timers(self.clock())
        self._backlog_mark = self.outbox.max_id()
        with self._lock:
            self._hold_until = 0.0
        self.outbox.wake.set()

    def on_receipt(self, payload: bytes) -> None:
        """A ``HardSampleReceipt``: delete the rows it names (stored or rejected)."""
        try:
            r = decode(payload, HardSampleReceipt)
        except ProtocolError as e:
            self.stats.inc("hard_receipt_invalid")
            log.error("%s: bad hard-sample receipt: %s", self.device, e)
            return
        if r.device != self.device:
            self.stats.inc("hard_receipt_invalid")
            log.error("%s: receipt addressed to device %r ignored", self.device, r.device)
            return
        self.stats.inc("hard_receipts")
        self.outbox.receipt(r.stored, r.rejected)
