"""Store announcements against the real Mosquitto on 1883: the agent follows
``store/announce/{a}`` for the algorithms its desired state names, refuses
forged, expired, replayed and misaddressed announcements (logged, counted,
reported), prefetches the announced version of its channel into the cache
without running it, so that the later desired state naming it needs no
download; the last trusted announcement survives a restart."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent, load_config
from edge_agent.protocol import (
    Announcement,
    ArtifactRef,
    ReportedState,
    Topics,
    encode,
    utcnow,
)
from tests.edge_support import (
    ChunkServer,
    Keys,
    Watcher,
    build_package,
    client,
    desired,
    publish_retained,
    wait_for,
)

pytestmark = pytest.mark.integration


def announcement(
    keys: Keys,
    algorithm: str,
    version: str,
    ref: ArtifactRef,
    *,
    issued_delta: timedelta = timedelta(0),
    ttl: timedelta = timedelta(hours=1),
    channel: str = "stable",
) -> Announcement:
    now = utcnow() + issued_delta
    a = Announcement(
        algorithm=algorithm,
        channels={channel: version},
        artifacts={version: ref},
        issued_at=now,
        expires_at=now + ttl,
    )
    sig = base64.b64encode(keys.private.sign(a.signing_bytes())).decode()
    return a.model_copy(update={"signature": sig})


def test_announced_version_is_prefetched_not_run_and_later_applied_without_download(
    tmp_path: Path, mqtt_port: int
) -> None:
    keys = Keys(tmp_path)
    srv = ChunkServer(mqtt_port)
    alg = f"pf-{uuid.uuid4().hex[:8]}"
    dev = f"t-{uuid.uuid4().hex[:10]}"
    _, ref1, _ = build_package(tmp_path, keys, algorithm=alg, version="1.0.0")
    _, ref2, _ = build_package(tmp_path, keys, algorithm=alg, version="2.0.0", bias=0.5)
    for archive in tmp_path.glob(f"{alg}-*.cbpkg"):
        srv.add(archive)
    settings: dict[str, Any] = {
        "broker_url": f"mqtt://127.0.0.1:{mqtt_port}",
        "data_dir": tmp_path / dev,
        "store_public_key": keys.path,
        "chunk_size": 2048,
        "chunk_timeout_s": 2.0,
        "report_interval_s": 0.5,
        "retry_failed_s": 120,
        "ort_threads": 1,
    }
    agents: list[Agent] = []

    def start() -> Agent:
        a = Agent(load_config(None, device_id=dev, **settings)).start()
        agents.append(a)
        assert a.session.wait_connected(10)
        return a

    watch = Watcher(mqtt_port, Topics.reported(dev), ReportedState)
    sender = client(mqtt_port)
    announce_topic = Topics.announce(alg)
    try:
        agent = start()
        publish_retained(
            mqtt_port, Topics.desired(dev), encode(desired(dev, 1, [("cam-1", alg, "1.0.0", ref1)]))
        )
        wait_for(lambda: agent.applied_revision == 1, 60)
        wait_for(lambda: announce_topic in agent.session._handlers, 10)
        # the reported state on the broker carries the outbox
        wait_for(lambda: watch.last() is not None and watch.last().outbox is not None, 10)

        # a good announcement moves "stable" to 2.0.0: prefetched, not run
        good = announcement(keys, alg, "2.0.0", ref2)
        publish_retained(mqtt_port, announce_topic, encode(good))
        wait_for(lambda: agent.cache.has(ref2.sha256), 60)
        assert agent.stats.get("announcements_accepted") >= 1
        assert agent.stats.get("prefetch.done") == 1
        assert agent.applied_revision == 1
        assert [k[1] for k in agent.models] == ["1.0.0"]
        assert agent.streams["cam-1"].model.manifest.version == "1.0.0"
        fetched = len(srv.requests[dev])
        assert fetched > 0

        # hostile announcements: refused, counted by reason, reported; nothing fetched
        forged = announcement(Keys(tmp_path), alg, "2.0.0", ref2, issued_delta=timedelta(1))
        replay = announcement(keys, alg, "2.0.0", ref2, issued_delta=-timedelta(hours=2))
        expired = announcement(
            keys, alg, "2.0.0", ref2, issued_delta=-timedelta(minutes=1), ttl=timedelta(seconds=1)
        )
        other = announcement(keys, f"{alg}-x", "2.0.0", ref2, issued_delta=timedelta(minutes=1))
        for a in (forged, replay, expired, other):
            sender.publish(announce_topic, encode(a), qos=1).wait_for_publish(5)
        wait_for(
            lambda: (
                agent.stats.get("announcements_rejected.signature_invalid") == 1
                and agent.stats.get("announcements_rejected.stale_metadata") == 2
                and agent.stats.get("announcements_rejected.message_invalid") == 1
            ),
            20,
        )
        assert agent.prefetcher.trusted[alg].issued_at == good.issued_at
        wait_for(
            lambda: (
                "announcement" in (watch.last().last_error or "") and watch.last().rejected >= 4
            ),
            10,
        )

        # the desired state names 2.0.0: applied from the cache, no chunk requested
        publish_retained(
            mqtt_port, Topics.desired(dev), encode(desired(dev, 2, [("cam-1", alg, "2.0.0", ref2)]))
        )
        wait_for(lambda: agent.applied_revision == 2, 60)
        assert [k[1] for k in agent.models] == ["2.0.0"]
        assert len(srv.requests[dev]) == fetched
        assert agent.stats.get("cache_hits") >= 1

        # a restart keeps the last trusted announcement: the replay is still refused
        agent.stop()
        agent = start()
        assert agent.prefetcher.trusted[alg].issued_at == good.issued_at
        wait_for(lambda: agent.applied_revision == 2, 60)
        wait_for(lambda: announce_topic in agent.session._handlers, 10)
        sender.publish(announce_topic, encode(replay), qos=1).wait_for_publish(5)
        wait_for(lambda: agent.stats.get("announcements_rejected.stale_metadata") == 1, 20)
        assert len(srv.requests[dev]) == fetched
    finally:
        for a in agents:
            a.stop()
        sender.disconnect()
        sender.loop_stop()
        watch.close()
        srv.close()
        for t in (announce_topic, Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
            publish_retained(mqtt_port, t, b"")


def test_prefetch_gives_way_to_an_update_and_resumes(tmp_path: Path, mqtt_port: int) -> None:
    """A prefetch in progress steps aside for an update's download and resumes
    from its partial download afterwards."""
    keys = Keys(tmp_path)
    srv = ChunkServer(mqtt_port)
    alg, other = f"pf-{uuid.uuid4().hex[:8]}", f"pg-{uuid.uuid4().hex[:8]}"
    dev = f"t-{uuid.uuid4().hex[:10]}"
    _, ref1, _ = build_package(tmp_path, keys, algorithm=alg, version="1.0.0")
    _, ref2, _ = build_package(tmp_path, keys, algorithm=alg, version="2.0.0", bias=0.5)
    _, ref_o, _ = build_package(tmp_path, keys, algorithm=other, version="1.0.0")
    for archive in tmp_path.glob("p*.cbpkg"):
        srv.add(archive)
    assert ref2.size > 2 * 1024  # more than the two chunks let through below
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{mqtt_port}",
        data_dir=tmp_path / dev,
        store_public_key=keys.path,
        chunk_size=1024,
        chunk_window=1,
        chunk_timeout_s=30.0,
        retry_failed_s=120,
        ort_threads=1,
    )
    agent = Agent(cfg).start()
    try:
        assert agent.session.wait_connected(10)
        publish_retained(
            mqtt_port, Topics.desired(dev), encode(desired(dev, 1, [("cam-1", alg, "1.0.0", ref1)]))
        )
        wait_for(lambda: agent.applied_revision == 1, 60)
        wait_for(lambda: Topics.announce(alg) in agent.session._handlers, 10)
        srv.budget = 2  # the store answers two chunks of the prefetch, then stalls
        publish_retained(
            mqtt_port, Topics.announce(alg), encode(announcement(keys, alg, "2.0.0", ref2))
        )
        wait_for(lambda: agent.progress.get(f"{alg} 2.0.0 prefetch", 0) > 0, 30)
        # an update for another stream needs a download now: the prefetch steps aside
        items = [("cam-1", alg, "1.0.0", ref1), ("cam-2", other, "1.0.0", ref_o)]
        publish_retained(mqtt_port, Topics.desired(dev), encode(desired(dev, 2, items)))
        wait_for(lambda: agent.stats.get("prefetch.deferred") >= 1, 30)
        assert not agent.cache.has(ref2.sha256)
        srv.budget = None
        srv.gate.set()
        wait_for(lambda: agent.applied_revision == 2, 60)
        wait_for(lambda: agent.cache.has(ref2.sha256), 60)
        assert agent.stats.get("prefetch.done") == 1
        assert agent.stats.get("fetch_resumed") >= 1  # went on where it stopped
        assert sorted(k[0] for k in agent.models) == sorted([alg, other])
        assert all(k[1] == "1.0.0" for k in agent.models)  # 2.0.0 is cached, not run
    finally:
        agent.stop()
        srv.close()
        for t in (Topics.announce(alg), Topics.desired(dev), Topics.reported(dev)):
            publish_retained(mqtt_port, t, b"")
        publish_retained(mqtt_port, Topics.status(dev), b"")
