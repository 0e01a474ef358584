"""The fleet mirror's parsing and folding (cloud.fleet._state): topics, schemas,
hostile payloads, last-writer-wins, last-seen rules, counts, retries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cloud.fleet import Batch, Kind, Rejected, RejectReason, parse, rate_per_min
from cloud.fleet._state import minute_of, split_topic
from edge_agent.protocol import (
    DeviceStatus,
    Event,
    HardSampleReceipt,
    HardwareProfile,
    LoadedModel,
    ReportedState,
    Topics,
    encode,
)

T0 = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
SHA = "a" * 64


def status(d: str = "cam-1", state: str = "online", at: datetime = T0) -> bytes:
    hw = HardwareProfile(target="cpu-x86", cpu="x", cores=4, memory_mb=2048)
    return encode(DeviceStatus(device=d, state=state, agent_version="1.2.0", hardware=hw, at=at))  # type: ignore[arg-type]


def reported(d: str = "cam-1", rev: int = 3, at: datetime = T0, **kw: object) -> bytes:
    models = [LoadedModel(algorithm="tiny", version="1.0.0", runtime="onnxruntime-cpu", sha256=SHA)]
    return encode(ReportedState(device=d, applied_revision=rev, models=models, at=at, **kw))  # type: ignore[arg-type]


def event(d: str = "cam-1", eid: str = "evt-00000001", at: datetime = T0) -> bytes:
    return encode(
        Event(
            id=eid,
            device=d,
            stream="s1",
            algorithm="tiny",
            model_version="1.0.0",
            event="car",
            detections=[],
            started_at=at,
            at=at,
        )
    )


def test_topics_map_to_kinds_and_others_are_rejected() -> None:
    assert split_topic(Topics.status("a.b-c")) == ("a.b-c", Kind.STATUS)
    assert split_topic(Topics.reported("d")) == ("d", Kind.REPORTED)
    assert split_topic(Topics.events("d")) == ("d", Kind.EVENTS)
    assert split_topic(Topics.hard_receipt("d")) == ("d", Kind.RECEIPT)
    bad_topics = (
        "cb/v1/dev/d/hard",
        "cb/v1/dev//status",
        "cb/v1/dev/a b/status",
        "cb/v1/dev/-x/reported",
        "cb/v1/dev/" + "d" * 129 + "/status",
        "cb/v2/dev/d/status",
        "x",
        "",
    )
    for bad in bad_topics:
        with pytest.raises(Rejected) as e:
            split_topic(bad)
        assert e.value.reason is RejectReason.TOPIC


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", RejectReason.MALFORMED),
        (b"[1, 2]", RejectReason.MALFORMED),
        (b"\xff\xfe", RejectReason.MALFORMED),
        (json.dumps({"device": "cam-1", "state": "online"}).encode(), RejectReason.SCHEMA),
        (
            json.dumps({"schema": "citybrain.status/9", "device": "cam-1", "state": "on"}).encode(),
            RejectReason.SCHEMA,
        ),
        (
            json.dumps({"schema": "citybrain.status/1", "device": "cam-1", "state": "on"}).encode(),
            RejectReason.MALFORMED,
        ),
        (
            json.dumps(
                {"schema": "citybrain.status/1", "device": "cam-1", "state": "online", "x": 1}
            ).encode(),
            RejectReason.MALFORMED,
        ),
        (status("cam-2"), RejectReason.DEVICE_MISMATCH),
        (reported(), RejectReason.SCHEMA),  # a reported state on the status topic
    ],
)
def test_hostile_status_payloads_are_rejected_with_a_reason(
    payload: bytes, reason: RejectReason
) -> None:
    with pytest.raises(Rejected) as e:
        parse(Topics.status("cam-1"), payload)
    assert e.value.reason is reason and e.value.detail


def test_empty_payloads_clear_retained_state_but_not_events() -> None:
    u = parse(Topics.status("cam-1"), b"", retained=True)
    assert u.kind is Kind.STATUS and u.message is None
    assert parse(Topics.reported("cam-1"), b"").message is None
    with pytest.raises(Rejected, match="empty payload"):
        parse(Topics.events("cam-1"), b"")


def test_latest_status_and_reported_win_in_arrival_order() -> None:
    b = Batch()
    b.add(parse(Topics.status("cam-1"), status(), now=T0))
    b.add(parse(Topics.reported("cam-1"), reported(rev=1), now=T0))
    b.add(parse(Topics.reported("cam-1"), reported(rev=2), now=T0 + timedelta(seconds=1)))
    # the last will carries the time the session started: still the latest word
    will = status(state="offline", at=T0 - timedelta(hours=1))
    b.add(parse(Topics.status("cam-1"), will, now=T0 + timedelta(seconds=2)))
    c = b.devices["cam-1"]
    assert c.status is not None and c.status.state == "offline"
    assert c.reported is not None and c.reported.applied_revision == 2
    # the offline will is the broker speaking: last seen stays at the last report
    assert c.last_seen == T0 + timedelta(seconds=1)


def test_retained_messages_are_seen_at_their_own_time_stamp() -> None:
    b = Batch()
    old = T0 - timedelta(minutes=10)
    b.add(parse(Topics.reported("cam-1"), reported(at=old), retained=True, now=T0))
    assert b.devices["cam-1"].last_seen == old


def test_events_and_receipts_are_counted_per_minute_with_their_ids() -> None:
    b = Batch()
    b.add(parse(Topics.events("cam-1"), event(eid="evt-00000001"), now=T0))
    b.add(parse(Topics.events("cam-1"), event(eid="evt-00000002"), now=T0 + timedelta(minutes=1)))
    receipt = HardSampleReceipt(
        device="cam-1", stored=["hs-00000001", "hs-00000002"], rejected={"hs-bad0001": "x"}
    )
    b.add(parse(Topics.hard_receipt("cam-1"), encode(receipt), now=T0))
    m = minute_of(T0)
    assert [(c.kind, c.minute, c.id) for c in b.counts] == [
        ("events", m, "evt-00000001"),
        ("events", m + 1, "evt-00000002"),
        ("hard", m, "hs-00000001"),
        ("hard", m, "hs-00000002"),
    ]
    assert b.devices["cam-1"].last_event is not None
    assert b.devices["cam-1"].last_event.id == "evt-00000002"


def test_a_receipt_alone_changes_no_device_record() -> None:
    b = Batch()
    receipt = HardSampleReceipt(device="cam-9", stored=["hs-00000009"])
    b.add(parse(Topics.hard_receipt("cam-9"), encode(receipt), now=T0))
    assert "cam-9" not in b.devices and len(b.counts) == 1


def test_clearing_the_status_removes_the_device_and_a_new_status_follows() -> None:
    b = Batch()
    b.add(parse(Topics.reported("cam-1"), reported(), now=T0))
    b.add(parse(Topics.status("cam-1"), b"", retained=False, now=T0))
    c = b.devices["cam-1"]
    assert c.removed and c.reported is None
    b.add(parse(Topics.status("cam-1"), status(), now=T0))
    assert b.devices["cam-1"].removed and b.devices["cam-1"].status is not None


def test_merge_keeps_the_latest_state_and_every_count_for_a_retry() -> None:
    first, later = Batch(), Batch()
    first.add(parse(Topics.status("cam-1"), status(), now=T0))
    first.add(parse(Topics.events("cam-1"), event(eid="evt-00000001"), now=T0))
    first.reject(RejectReason.MALFORMED)
    later.add(parse(Topics.status("cam-1"), status(state="offline"), now=T0))
    later.add(parse(Topics.reported("cam-2"), reported("cam-2"), now=T0))
    later.add(parse(Topics.events("cam-1"), event(eid="evt-00000002"), now=T0))
    later.reject(RejectReason.MALFORMED)
    first.merge(later)
    assert first.devices["cam-1"].status.state == "offline"  # type: ignore[union-attr]
    assert first.devices["cam-1"].last_event.id == "evt-00000002"  # type: ignore[union-attr]
    assert set(first.devices) == {"cam-1", "cam-2"}
    assert len(first.counts) == 2 and first.rejected == {"malformed": 2}


def test_rate_per_min_weights_the_previous_minute_by_what_is_left_of_the_window() -> None:
    start = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert rate_per_min(5, 60, start) == 65  # at :00 the whole previous minute counts
    assert rate_per_min(5, 60, start + timedelta(seconds=30)) == 35
    assert rate_per_min(0, 0, start + timedelta(seconds=59)) == 0
