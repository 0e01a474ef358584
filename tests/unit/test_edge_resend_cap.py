"""The resend cap (bytes/hour on re-sends and on the backlog drained after a
reconnect: rows wait, in order, never dropped, counted) and the outbox state in
``ReportedState`` (depth, drops, oldest age; re-published on change, throttled;
older reports without it still decode)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent, load_config
from edge_agent.protocol import HardwareProfile, OutboxState, ReportedState, Topics, decode, encode
from tests.conftest import free_port
from tests.edge_support import Keys
from tests.unit.test_edge_outbox import Rig

ROW = len(b"payload key-0000")  # bytes of one test row


def drain(r: Rig) -> list[bytes]:
    """Ack what was published, confirm it with a receipt; returns the payloads."""
    sent = r.sent_payloads()
    r.session.ack_all(0)
    r.receipt(stored=[p.decode().split()[1] for p in sent])
    return sent


def test_backlog_after_a_reconnect_drains_within_the_cap_in_order(tmp_path: Path) -> None:
    r = Rig(tmp_path, resend_budget_bytes_per_hour=2 * ROW)
    r.session.connected.clear()
    r.add(*(f"key-000{i}" for i in range(5)))  # selected during an outage
    assert r.d.pump() == 0
    r.session.connected.set()
    r.d.on_connected()
    assert r.d.pump() == 2  # two rows fit the hour; three wait
    assert r.stats.get("hard_resend_delayed") == 3
    r.add("key-0005")  # selected while connected: not backlog, not capped
    assert r.d.pump() == 1
    assert drain(r) == [b"payload key-0000", b"payload key-0001", b"payload key-0005"]
    assert r.d.pump() == 0 and r.outbox.keys() == ["key-0002", "key-0003", "key-0004"]
    r.clock.t += 3601.0
    assert r.d.pump() == 2
    assert drain(r) == [b"payload key-0002", b"payload key-0003"]
    r.clock.t += 3601.0
    assert r.d.pump() == 1
    assert drain(r) == [b"payload key-0004"]
    assert r.outbox.count() == 0 and r.stats.get("outbox_dropped") == 0
    assert r.stats.get("hard_resend_bytes") == 5 * ROW
    assert r.stats.get("hard_resend_delayed") == 3  # each held row counted once


def test_resends_without_a_receipt_are_capped_new_samples_are_not(tmp_path: Path) -> None:
    r = Rig(tmp_path, resend_budget_bytes_per_hour=ROW, receipt_timeout_s=10.0)
    r.add("key-0000", "key-0001")
    assert r.d.pump() == 2  # first attempts of samples selected while connected
    r.session.ack_all(0)
    assert r.stats.get("hard_resend_bytes") == 0
    r.clock.t += 11.0  # no receipt: both are due again, the cap lets one go
    assert r.d.pump() == 1 and r.sent_payloads() == [b"payload key-0000"]
    r.add("key-0002")
    assert r.d.pump() == 1  # the new sample does not wait behind the capped re-send
    assert r.outbox.state_of("key-0001").value == "queued"
    r.clock.t += 3601.0
    r.session.sent.clear()
    r.receipt(stored=["key-0000", "key-0002"])
    assert r.d.pump() == 1 and r.sent_payloads() == [b"payload key-0001"]
    assert r.stats.get("hard_resend_delayed") == 1


def test_a_row_larger_than_the_cap_still_goes_once_the_hour_is_empty(tmp_path: Path) -> None:
    r = Rig(tmp_path, resend_budget_bytes_per_hour=ROW // 2)
    r.add("key-0000", "key-0001")
    r.d.on_connected()  # both are backlog now
    assert r.d.pump() == 1  # over the cap, but nothing else was sent this hour
    assert r.d.pump() == 0
    r.clock.t += 3601.0
    assert r.d.pump() == 1


def test_no_cap(tmp_path: Path) -> None:
    r = Rig(tmp_path, resend_budget_bytes_per_hour=None)
    r.add(*(f"key-000{i}" for i in range(5)))
    r.d.on_connected()
    assert r.d.pump() == 5 and r.stats.get("hard_resend_delayed") == 0


# ---------------------------------------------------------------------------
# outbox in ReportedState
# ---------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Any:
    keys = Keys(tmp_path)
    dev = f"o-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",  # never connects: not needed here
        data_dir=tmp_path / dev,
        store_public_key=keys.path,
        outbox_report_min_s=60.0,
        hard={"outbox_max_rows": 3},
    )
    a = Agent(cfg, hardware=HardwareProfile(target="cpu-test"))
    yield a
    a.outbox.close()


def test_reported_carries_the_outbox(agent: Agent) -> None:
    r = agent.reported()
    assert r.outbox == OutboxState(depth=0, dropped=0, oldest_age_s=None)
    for i in range(5):
        agent.outbox.add(f"key-{i:04d}", Topics.hard(agent.device), b"x")
    r = decode(encode(agent.reported()), ReportedState)
    assert r.outbox is not None
    assert (r.outbox.depth, r.outbox.dropped) == (3, 2)
    assert r.outbox.oldest_age_s is not None and r.outbox.oldest_age_s >= 0


def test_a_changed_outbox_is_reported_at_most_every_min_interval(agent: Agent) -> None:
    agent._reported_outbox = (0, 0)  # as if just published with an empty outbox
    agent._last_report = time.monotonic()
    agent._maybe_report_outbox()
    assert not agent._report_now.is_set()  # unchanged
    agent.outbox.add("key-0000", Topics.hard(agent.device), b"x")
    agent._maybe_report_outbox()
    assert not agent._report_now.is_set()  # changed, but reported less than 60 s ago
    agent._last_report -= 61.0
    agent._maybe_report_outbox()
    assert agent._report_now.is_set()


def test_reports_of_older_agents_without_outbox_still_decode() -> None:
    old = b'{"schema":"citybrain.reported/1","device":"d1","applied_revision":3}'
    r = decode(old, ReportedState)
    assert r.outbox is None and r.applied_revision == 3
