"""The hard-sample outbox state machine (queued -> sending -> sent -> deleted on
a receipt) driven through ``HardDelivery`` with an in-memory fake session and a
fake clock: receipts delete (stored or rejected, counted), a missing receipt
re-sends the same id, PUBACK 0x10 / failures re-queue with a backoff, a restart
re-queues what was in flight, windows, cap and budget."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_agent._config import HardSampleConfig, SelectorSpec
from edge_agent._hard import HardDelivery, HardSampler
from edge_agent._outbox import ROW_TRANSITIONS, Outbox, RowState
from edge_agent._runtime import Result
from edge_agent._stats import Stats
from edge_agent.protocol import HardSample, HardSampleReceipt, Topics, decode, encode
from tests.edge_support import Keys, build_package

DEV = "dev-1"


@dataclass
class Sent:
    topic: str
    payload: bytes
    on_ack: Callable[[int], None] | None


@dataclass
class FakeSession:
    """Records publishes; the test plays the broker by calling ``on_ack``."""

    connected: threading.Event = field(default_factory=threading.Event)
    sent: list[Sent] = field(default_factory=list)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        on_ack: Callable[[int], None] | None = None,
    ) -> int:
        assert qos == 1
        self.sent.append(Sent(topic, payload, on_ack))
        return len(self.sent)

    def ack_all(self, code: int = 0) -> None:
        pending, self.sent = self.sent, []
        for s in pending:
            assert s.on_ack is not None
            s.on_ack(code)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(**over: object) -> HardSampleConfig:
    base: dict[str, object] = {
        "receipt_timeout_s": 30.0,
        "retry_min_s": 1.0,
        "retry_max_s": 8.0,
        "publish_window": 20,
        "receipt_window": 200,
    }
    base.update(over)
    return HardSampleConfig.model_validate(base)


class Rig:
    def __init__(self, tmp: Path, *, max_rows: int = 100, **over: object) -> None:
        self.tmp = tmp
        self.stats = Stats()
        self.clock = Clock()
        self.session = FakeSession()
        self.session.connected.set()
        self.cfg = cfg(**over)
        self.max_rows = max_rows
        self.open()

    def open(self) -> None:
        self.outbox = Outbox(self.tmp / "o.sqlite", max_rows=self.max_rows, stats=self.stats)
        self.d = HardDelivery(
            self.cfg, DEV, self.outbox, self.session, self.stats, clock=self.clock
        )

    def add(self, *keys: str) -> None:
        for k in keys:
            self.outbox.add(k, Topics.hard(DEV), f"payload {k}".encode())

    def receipt(self, stored: list[str] = (), rejected: dict[str, str] | None = None) -> None:  # type: ignore[assignment]
        r = HardSampleReceipt(device=DEV, stored=list(stored), rejected=rejected or {})
        self.d.on_receipt(encode(r))

    def sent_payloads(self) -> list[bytes]:
        return [s.payload for s in self.session.sent]


def test_transitions_table_is_the_documented_lifecycle() -> None:
    assert ROW_TRANSITIONS[RowState.QUEUED] == {RowState.SENDING}
    assert ROW_TRANSITIONS[RowState.SENDING] == {RowState.SENT, RowState.QUEUED}
    assert ROW_TRANSITIONS[RowState.SENT] == {RowState.QUEUED}


def test_puback_only_marks_sent_and_the_receipt_deletes(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.add("key-0000", "key-0001", "key-0002")
    assert r.d.pump() == 3
    assert r.outbox.states()[RowState.SENDING] == 3
    assert r.d.pump() == 0  # in flight rows are not offered twice
    r.session.ack_all(0)
    assert r.outbox.states() == {RowState.QUEUED: 0, RowState.SENDING: 0, RowState.SENT: 3}
    assert r.outbox.count() == 3 and r.stats.get("hard_acked") == 3  # PUBACK deletes nothing
    r.receipt(stored=["key-0000", "key-0002"])
    assert r.outbox.keys() == ["key-0001"]
    assert r.outbox.state_of("key-0001") is RowState.SENT
    assert r.stats.get("hard_stored") == 2
    r.receipt(stored=["key-0000", "key-0001"])  # a duplicate receipt is harmless
    assert r.outbox.count() == 0
    assert r.stats.get("hard_stored") == 3 and r.stats.get("hard_receipt_unknown") == 1


def test_rejected_samples_are_deleted_counted_and_never_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Rig(tmp_path)
    r.add("bad-00001", "good-0001")
    r.d.pump()
    r.session.ack_all(0)
    with caplog.at_level("WARNING", logger="edge_agent.outbox"):
        r.receipt(
            stored=["good-0001"], rejected={"bad-00001": "image_invalid: not a decodable JPEG"}
        )
    assert r.outbox.count() == 0
    assert r.stats.get("hard_rejected") == 1
    assert r.stats.get("hard_rejected.image_invalid") == 1
    assert "bad-00001" in caplog.text and "not a decodable JPEG" in caplog.text
    r.clock.t += 10_000
    assert r.d.pump() == 0 and r.session.sent == []


def test_no_receipt_in_time_resends_the_same_id(tmp_path: Path) -> None:
    r = Rig(tmp_path, receipt_timeout_s=30.0)
    sampler_payload = encode(
        HardSample(
            id="abcdef0123",
            device=DEV,
            stream="s",
            algorithm="alg",
            model_version="1.0.0",
            selector="low_confidence",
            reason="r",
            image_jpeg_b64="AAAA",
        )
    )
    r.outbox.add("abcdef0123", Topics.hard(DEV), sampler_payload)
    r.d.pump()
    first = r.session.sent[0]
    r.session.ack_all(0)
    r.clock.t += 29.9
    assert r.d.pump() == 0 and r.stats.get("hard_resent") == 0
    r.clock.t += 0.2
    assert r.d.pump() == 1
    again = r.session.sent[0]
    assert again.payload == first.payload  # byte for byte: same idempotency key
    assert decode(again.payload, HardSample).id == "abcdef0123"
    assert r.stats.get("hard_resent") == 1 and r.stats.get("hard_republished") == 1
    # the PUBACK of the first attempt arriving late changes nothing
    assert first.on_ack is not None
    first.on_ack(0)
    assert r.outbox.state_of("abcdef0123") is RowState.SENDING
    assert r.stats.get("hard_ack_stale") == 1
    r.session.ack_all(0)
    # the second wait is twice as long
    r.clock.t += 59.0
    assert r.d.pump() == 0
    r.clock.t += 1.5
    assert r.d.pump() == 1 and r.stats.get("hard_resent") == 2
    r.session.ack_all(0)
    r.receipt(stored=["abcdef0123"])
    assert r.outbox.count() == 0


def test_a_publish_without_puback_is_resent_after_the_timeout(tmp_path: Path) -> None:
    r = Rig(tmp_path, receipt_timeout_s=5.0)
    r.add("key-0000")
    r.d.pump()
    r.session.sent.clear()  # lost with a broker crash, never acknowledged
    r.clock.t += 5.0
    assert r.d.pump() == 1 and r.sent_payloads() == [b"payload key-0000"]


@pytest.mark.parametrize("code", [0x10, 0x80, 0x97])
def test_refused_puback_requeues_with_backoff(tmp_path: Path, code: int) -> None:
    r = Rig(tmp_path, retry_min_s=1.0, retry_max_s=4.0)
    r.add("key-0000", "key-0001")
    r.d.pump()
    r.session.ack_all(code)
    assert r.outbox.states()[RowState.QUEUED] == 2 and r.outbox.count() == 2
    assert r.stats.get("hard_requeued") == 2 and r.stats.get("hard_acked") == 0
    assert r.stats.get("hard_no_subscribers") == (2 if code == 0x10 else 0)
    r.add("key-0002")
    assert r.d.pump() == 0  # held: no new publishes either
    r.clock.t += 1.0
    assert r.d.pump() == 3
    r.session.ack_all(code)  # refused again: the wait doubles
    r.clock.t += 1.0
    assert r.d.pump() == 0
    r.clock.t += 1.0
    assert r.d.pump() == 3
    r.session.ack_all(code)
    r.clock.t += 4.0  # capped at retry_max_s
    assert r.d.pump() == 3
    r.session.ack_all(0)  # the ingest is back
    r.receipt(stored=["key-0000", "key-0001", "key-0002"])
    assert r.outbox.count() == 0


def test_restart_requeues_rows_that_were_sending_or_sent(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.add("key-0000", "key-0001", "key-0002")
    r.d.pump()
    acks = r.session.sent
    r.session.sent = []
    assert acks[0].on_ack is not None
    acks[0].on_ack(0)  # key-0000 sent; the others wait for a PUBACK
    assert r.outbox.states()[RowState.SENT] == 1
    r.outbox.close()
    r.open()  # the agent restarts
    assert r.outbox.states() == {RowState.QUEUED: 3, RowState.SENDING: 0, RowState.SENT: 0}
    assert r.stats.get("outbox_requeued_on_open") == 3
    assert r.d.pump() == 3
    assert r.sent_payloads() == [b"payload key-0000", b"payload key-0001", b"payload key-0002"]


def test_rows_of_an_older_outbox_schema_are_kept_and_sent(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "o.sqlite")
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " key TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute("INSERT INTO outbox (key, topic, payload) VALUES ('old-00001', 't', x'01')")
    db.commit()
    db.close()
    r = Rig(tmp_path)
    assert r.outbox.state_of("old-00001") is RowState.QUEUED
    assert r.d.pump() == 1 and r.sent_payloads() == [b"\x01"]


def test_windows_bound_what_waits_for_a_puback_and_for_a_receipt(tmp_path: Path) -> None:
    r = Rig(tmp_path, publish_window=2, receipt_window=3)
    r.add(*[f"key-{i:04d}" for i in range(6)])
    assert r.d.pump() == 2
    r.session.ack_all(0)
    assert r.d.pump() == 1  # 2 sent + 1 sending = receipt window
    r.session.ack_all(0)
    assert r.d.pump() == 0
    r.receipt(stored=["key-0000", "key-0001"])
    assert r.d.pump() == 2
    assert r.sent_payloads() == [b"payload key-0003", b"payload key-0004"]


def test_receipt_before_puback_and_disconnected_session(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.add("key-0000")
    r.d.pump()
    r.receipt(stored=["key-0000"])  # the ingest was faster than the PUBACK callback
    assert r.outbox.count() == 0
    r.session.ack_all(0)  # the late PUBACK finds nothing, changes nothing
    assert r.stats.get("hard_ack_stale") == 1 and r.outbox.count() == 0
    r.session.connected.clear()
    r.add("key-0001")
    assert r.d.pump() == 0 and r.session.sent == []


def test_bad_or_misaddressed_receipts_delete_nothing(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.add("key-0000")
    r.d.on_receipt(b"{not json")
    r.d.on_receipt(encode(HardSampleReceipt(device="dev-2", stored=["key-0000"])))
    r.d.on_receipt(b'{"schema": "citybrain.hardreceipt/9", "device": "dev-1"}')
    assert r.outbox.count() == 1 and r.stats.get("hard_receipt_invalid") == 3


def test_cap_drops_oldest_even_when_sent_and_counts_them(tmp_path: Path) -> None:
    r = Rig(tmp_path, max_rows=3)
    r.add("key-0000", "key-0001")
    r.d.pump()
    r.session.ack_all(0)
    r.add("key-0002", "key-0003", "key-0004")
    assert r.outbox.keys() == ["key-0002", "key-0003", "key-0004"]
    assert r.stats.get("outbox_dropped") == 2
    r.add("key-0004")  # same idempotency key: stored once
    assert r.outbox.count() == 3
    r.receipt(stored=["key-0000"])  # a receipt for a dropped row is only counted
    assert r.stats.get("hard_receipt_unknown") == 1 and r.outbox.count() == 3


def test_resends_do_not_charge_the_bandwidth_budget(tmp_path: Path) -> None:
    r = Rig(tmp_path, receipt_timeout_s=1.0)
    keys = Keys(tmp_path)
    _, _, manifest = build_package(tmp_path, keys)
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    res = Result([], np.array([0.5, 0.3, 0.2], np.float32))
    hcfg = HardSampleConfig(
        selectors=[
            SelectorSpec(
                kind="low_confidence", params={"low": 0.0, "high": 1.01}, limits={"per_minute": 99}
            )
        ],
        max_image_side=32,
    )
    probe = HardSampler(
        hcfg, DEV, Outbox(tmp_path / "p.sqlite", max_rows=9, stats=Stats()), Stats()
    )
    one = len(probe.jpeg(frame)) * 4 // 3 + 4  # base64 size of one sample
    sampler = HardSampler(
        hcfg.model_copy(update={"budget_bytes_per_hour": 2 * one}), DEV, r.outbox, r.stats
    )

    def take() -> str | None:
        return sampler.consider(
            stream="s", frame=frame, manifest=manifest, result=res, shadow=None, centroids=None
        )

    assert take() == "low_confidence"
    for _ in range(4):  # published, acknowledged, no receipt: re-sent three times
        assert r.d.pump() == 1
        r.session.ack_all(0)
        r.clock.t += 100.0
    assert r.stats.get("hard_resent") == 3 and r.stats.get("hard_published") == 4
    assert take() == "low_confidence"  # the re-sends cost nothing from the budget
    assert take() is None and r.stats.get("hard_over_budget") == 1


def test_reconnect_restarts_the_timeouts_and_lifts_the_hold(tmp_path: Path) -> None:
    r = Rig(tmp_path, receipt_timeout_s=30.0, retry_min_s=5.0)
    r.add("key-0000", "key-0001")
    r.d.pump()
    r.session.ack_all(0)  # both sent
    r.session.connected.clear()
    r.clock.t += 100.0  # a long outage: receipts may wait in the broker for us
    assert r.d.pump() == 0
    r.session.connected.set()
    r.d.on_connected()
    assert r.d.pump() == 0  # the broker gets a fresh timeout to deliver queued receipts
    r.add("key-0002")
    assert r.d.pump() == 1
    r.session.ack_all(0x10)  # refused: held for 5 s ...
    r.add("key-0003")
    assert r.d.pump() == 0
    r.d.on_connected()  # ... unless the session reconnects (key-0002 keeps its own backoff)
    assert r.d.pump() == 1 and r.sent_payloads() == [b"payload key-0003"]
    r.session.sent.clear()
    r.clock.t += 29.0
    assert r.d.pump() == 1 and r.sent_payloads() == [b"payload key-0002"]
    r.session.sent.clear()
    r.clock.t += 1.0  # 30 s after the reconnect: no receipt, no PUBACK for key-0003
    assert r.d.pump() == 3
    assert r.sent_payloads() == [b"payload key-0000", b"payload key-0001", b"payload key-0003"]
