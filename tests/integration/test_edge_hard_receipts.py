"""End to end, a real agent's hard samples reach the catalog exactly once while
the broker is SIGKILLed twice: a real ``Agent`` (its ``HardSampler`` fills its
SQLite outbox, its ``HardDelivery`` publishes and waits for receipts), a real
Mosquitto with persistence on (own port and directory, autosave every second,
so a SIGKILL loses messages it already acknowledged) and a real
``citybrain ingest`` process on a temporary data dir and catalog. The second
kill happens while the ingest is down too, so samples the broker acknowledged
and queued for it are lost with the broker; they are re-sent after the receipt
timeout. At the end every sample is in the catalog exactly once and the outbox
is empty."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._runtime import Result
from tests.conftest import REPO
from tests.edge_support import Keys, build_package, wait_for

pytestmark = pytest.mark.integration

N = 45


def _bench() -> Any:
    if "ingest_bench" in sys.modules:
        return sys.modules["ingest_bench"]
    spec = importlib.util.spec_from_file_location(
        "ingest_bench", REPO / "benchmarks" / "ingest_bench.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ingest_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def catalog_keys(db: Path, dataset: str) -> list[str]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [
            r[0]
            for r in con.execute(
                "SELECT s.idempotency_key FROM dataset_samples ds "
                "JOIN samples s ON s.id = ds.sample_id JOIN datasets d ON d.id = ds.dataset_id "
                "WHERE d.name = ? AND ds.pool = 'field_hard'",
                (dataset,),
            )
        ]
    except sqlite3.OperationalError:  # schema not there yet
        return []
    finally:
        con.close()


def test_agent_hard_samples_survive_two_broker_kills_exactly_once(
    tmp_path: Path, data_dir: Path
) -> None:
    from cloud.catalog import Catalog
    from cloud.core.config import Settings
    from edge_agent import Agent, load_config

    bench = _bench()
    Catalog.open(Settings()).close()  # migrate before the consumer starts
    broker = bench.Broker(tmp_path / "broker")
    broker.start()
    log_path = tmp_path / "ingest.log"
    ingest = bench.IngestProcess(data_dir, broker.url, log_path, client_id="edge-receipts")
    ingest.start()
    wait_for(lambda: "subscribed" in log_path.read_text(errors="replace"), 60)

    keys = Keys(tmp_path)
    _, _, manifest = build_package(tmp_path, keys)
    dev = f"r-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=broker.url,
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
        reconnect_min_s=1,
        reconnect_max_s=1,
        keepalive_s=5,
        hard={
            "selectors": [
                {
                    "kind": "low_confidence",
                    "params": {"low": 0.0, "high": 1.01},
                    "limits": {"per_minute": 100_000},
                }
            ],
            "max_image_side": 48,
            "receipt_timeout_s": 3.0,
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
        },
    )
    agent = Agent(cfg)
    produced: list[str] = []
    add = agent.outbox.add

    def recording_add(key: str, topic: str, payload: bytes) -> None:
        produced.append(key)
        add(key, topic, payload)

    agent.outbox.add = recording_add  # type: ignore[method-assign]
    agent.start()
    rng = np.random.default_rng(7)
    res = Result([], np.array([0.5, 0.3, 0.2], np.float32))

    def produce(n: int) -> None:
        for _ in range(n):
            frame = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)  # distinct JPEGs
            took = agent.hard.consider(
                stream="cam1",
                frame=frame,
                manifest=manifest,
                result=res,
                shadow=None,
                centroids=None,
            )
            assert took == "low_confidence"

    def acked() -> int:
        return agent.stats.get("hard_acked")

    db = data_dir / "catalog.db"
    dataset = f"field-{manifest.id}"
    try:
        assert agent.session.wait_connected(15)
        produce(N // 3)
        wait_for(lambda: acked() >= 5, 20)
        broker.restart()  # 1: SIGKILL with samples in flight and awaiting receipts
        produce(N // 3)
        # receipts flow again once the ingest has subscribed again (0x10 until then)
        wait_for(lambda: agent.stats.get("hard_stored") >= N // 3, 30)
        ingest.kill()  # the broker queues for the ingest's session ...
        before = acked()
        produce(N - 2 * (N // 3))
        wait_for(lambda: acked() >= before + N - 2 * (N // 3), 30)
        broker.restart()  # 2: ... and loses what it acknowledged since its last save
        ingest.start()
        wait_for(lambda: agent.outbox.count() == 0, 45, interval=0.2)
        stored = catalog_keys(db, dataset)
    finally:
        agent.stop()
        ingest.stop()
        broker.stop()
    stats = agent.stats.snapshot()
    print({k: v for k, v in stats.items() if k.startswith(("hard", "outbox"))})
    assert len(set(produced)) == N
    assert sorted(stored) == sorted(produced), (len(stored), len(set(stored)))  # exactly once
    assert stats["outbox_added"] == N and stats.get("outbox_dropped", 0) == 0
    # every sample left the outbox because a receipt named it as stored
    assert stats["hard_stored"] == N and stats.get("hard_rejected", 0) == 0
    assert broker.kills == 2
