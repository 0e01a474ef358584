"""Hard-sample ingest against a real Mosquitto (started here, own port and
persistence dir): provenance, exactly once by idempotency key, every hostile
message rejected and counted without stopping the consumer, messages sent
while the consumer is down delivered when it is back."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from cloud.catalog.models import Dataset, DatasetSample, Sample
from cloud.core.config import Settings
from cloud.ingest import FIELD_POOL, HardSampleIngest, IngestConfig
from cloud.ingest._consumer import _Item
from edge_agent.protocol import HardSample, HardSampleReceipt, Topics, decode, encode
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _harness() -> Any:
    spec = importlib.util.spec_from_file_location(
        "ingest_bench", REPO / "benchmarks/ingest_bench.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ingest_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _harness()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    b = bench.Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings()


def _consumer(settings: Settings, broker: Any, client_id: str) -> HardSampleIngest:
    ing = HardSampleIngest(
        settings, IngestConfig(broker_url=broker.url, client_id=client_id, batch_ms=50)
    )
    ing.start()
    assert ing.wait_connected(10)
    time.sleep(0.3)  # SUBACK
    return ing


def _jpeg(tag: str) -> bytes:
    return bench.unique_jpeg(bench.base_jpeg(), tag)


def _sample(device: str, sid: str, image: bytes | None = None, **kw: Any) -> HardSample:
    fields: dict[str, Any] = dict(
        id=sid,
        device=device,
        stream="cam-north",
        algorithm="helmet",
        model_version="2.1.0",
        selector="entropy",
        reason="entropy 0.93 over 0.8",
        scores={"entropy": 0.93, "top": 0.44},
        captured_at=datetime(2026, 5, 1, 12, 30, tzinfo=UTC),
    )
    fields.update(kw)
    if "blob_ref" not in kw:
        fields["image_jpeg_b64"] = base64.b64encode(image or _jpeg(sid)).decode()
    return HardSample(**fields)


class Receipts:
    """Collects the ingest's receipts to every device."""

    def __init__(self, port: int) -> None:
        self.by_device: dict[str, list[HardSampleReceipt]] = {}
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("cb/v1/dev/+/hard/receipt", qos=1)
        self.c.loop_start()
        time.sleep(0.2)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        r = decode(msg.payload, HardSampleReceipt)
        assert msg.topic == Topics.hard_receipt(r.device)
        self.by_device.setdefault(r.device, []).append(r)

    def stored(self, device: str) -> list[str]:
        return [i for r in self.by_device.get(device, []) for i in r.stored]

    def rejected(self, device: str) -> dict[str, str]:
        return {k: v for r in self.by_device.get(device, []) for k, v in r.rejected.items()}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Pub:
    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, device: str, payload: bytes | str) -> None:
        self.c.publish(Topics.hard(device), payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait(pred: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_provenance_duplicates_and_hostile_messages(settings: Settings, broker: Any) -> None:
    ing = _consumer(settings, broker, "ingest-a")
    pub = Pub(broker.port)
    receipts = Receipts(broker.port)
    try:
        good = _sample("dev-a", "sample-good-1")
        pub.send("dev-a", encode(good))
        pub.send("dev-a", encode(good))  # redelivered by the device: one sample
        raw = json.loads(encode(_sample("dev-a", "sample-raw-1")))
        png = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (8, 8)).save(png, "PNG")
        # a blob uploaded beforehand and referenced by sha256
        uploaded = _jpeg("uploaded-blob")
        ref = ing.catalog.blobs.put(uploaded)
        hostile: list[tuple[str, bytes | str, str]] = [
            ("dev-a", b"\x00\xffnot json at all", "malformed"),
            ("dev-a", b"", "malformed"),
            ("dev-a", json.dumps([1, 2]), "malformed"),
            ("dev-a", json.dumps({**raw, "schema": "citybrain.hard/9"}), "schema"),
            ("dev-a", json.dumps({k: v for k, v in raw.items() if k != "schema"}), "schema"),
            ("dev-a", json.dumps({**raw, "surprise": 1}), "malformed"),
            ("dev-a", json.dumps({**raw, "id": "bad id/with slash"}), "malformed"),
            ("dev-a", json.dumps({**raw, "image_jpeg_b64": "@@not base64@@"}), "malformed"),
            ("dev-b", encode(_sample("dev-a", "sample-spoofed")), "device_mismatch"),
            ("dev-a", encode(_sample("dev-a", "sample-png-1", png.getvalue())), "bad_image"),
            ("dev-a", encode(_sample("dev-a", "sample-trunc-1", _jpeg("t")[:-60])), "bad_image"),
            (
                "dev-a",
                encode(_sample("dev-a", "sample-noblob", blob_ref="ab" * 32)),
                "blob_missing",
            ),
            # the good sample's key reused for other bytes: never overwrites it
            ("dev-a", encode(_sample("dev-a", "sample-good-1", _jpeg("other"))), "key_conflict"),
        ]
        for device, payload, _ in hostile:
            pub.send(device, payload)
        by_ref = _sample("dev-c", "sample-by-ref", blob_ref=ref, stream="cam-east")
        pub.send("dev-c", encode(by_ref))
        other_alg = _sample("dev-c", "sample-other-alg", algorithm="smoke")
        pub.send("dev-c", encode(other_alg))
        total = 2 + len(hostile) + 2

        def accounted() -> int:
            st = ing.stats.as_dict()
            return st["stored"] + st["duplicate"] + st["rejected_total"]

        _wait(lambda: accounted() >= total)  # every message is stored, a duplicate or rejected
        time.sleep(0.3)
        stats = ing.stats.as_dict()
        assert stats["received"] == total
        expected_rejects: dict[str, int] = {}
        for _, _, reason in hostile:
            expected_rejects[reason] = expected_rejects.get(reason, 0) + 1
        assert stats["rejected"] == expected_rejects
        assert stats["stored"] == 3 and stats["duplicate"] == 1
        reg = ing.registry
        assert reg.get_sample_value("citybrain_ingest_received_total") == total
        assert reg.get_sample_value("citybrain_ingest_stored_total") == 3
        assert reg.get_sample_value("citybrain_ingest_duplicate_total") == 1
        assert reg.get_sample_value("citybrain_ingest_rejected_total", {"reason": "schema"}) == 2

        with ing.catalog.sessions() as s:
            rows = s.execute(
                select(Sample, DatasetSample.pool, Dataset.name)
                .join(DatasetSample, DatasetSample.sample_id == Sample.id)
                .join(Dataset, Dataset.id == DatasetSample.dataset_id)
            ).all()
        by_key = {r[0].idempotency_key: r for r in rows}
        assert set(by_key) == {"sample-good-1", "sample-by-ref", "sample-other-alg"}
        sample, pool, dataset = by_key["sample-good-1"]
        assert (pool, dataset) == (FIELD_POOL, "field-helmet")
        assert sample.device == "dev-a" and sample.camera == "cam-north"
        assert sample.model_version == "2.1.0" and sample.selector == "entropy"
        assert sample.reason == "entropy 0.93 over 0.8"
        assert sample.scores == {"entropy": 0.93, "top": 0.44}
        assert sample.captured_at.replace(tzinfo=UTC) == datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
        assert sample.source == Topics.hard("dev-a") and sample.media_type == "image/jpeg"
        assert (sample.width, sample.height) == (48, 32)
        assert ing.catalog.blobs.get(sample.id) == base64.b64decode(good.image_jpeg_b64 or "")
        assert by_key["sample-by-ref"][0].id == ref and by_key["sample-by-ref"][2] == "field-helmet"
        assert by_key["sample-other-alg"][2] == "field-smoke"

        # receipts: what is in the catalog (a duplicate too), and what never will be
        _wait(lambda: "sample-other-alg" in receipts.stored("dev-c"))
        assert sorted(receipts.stored("dev-a")) == ["sample-good-1", "sample-good-1"]
        assert sorted(receipts.stored("dev-c")) == ["sample-by-ref", "sample-other-alg"]
        rejected = receipts.rejected("dev-a")
        assert rejected["sample-png-1"].startswith("bad_image")
        assert rejected["sample-noblob"].startswith("blob_missing")
        assert rejected["sample-raw-1"].startswith("malformed")  # the bad base64 one
        assert receipts.rejected("dev-b") == {
            "sample-spoofed": "device_mismatch: sample sample-spoofed says device 'dev-a' "
            "on topic of 'dev-b'"
        }
        assert "sample-spoofed" not in receipts.rejected("dev-a")  # only the sender hears

        # the consumer is still alive after all that
        pub.send("dev-a", encode(_sample("dev-a", "sample-after-1")))
        _wait(lambda: ing.stats.stored == 4)
    finally:
        receipts.close()
        pub.close()
        ing.stop()


def test_topic_checks_without_broker(settings: Settings) -> None:
    ing = HardSampleIngest(settings, IngestConfig(broker_url="mqtt://127.0.0.1:1"))
    ing._ack = lambda items: None  # type: ignore[method-assign]
    payload = encode(_sample("dev-a", "sample-topic-1"))
    ing.process(
        [
            _Item("cb/v1/dev/dev-a/events", payload, 1, 1, 0),
            _Item("elsewhere/dev-a/hard", payload, 2, 1, 0),
            _Item("cb/v1/dev/dev-a/hard", payload, 3, 1, 0),
            _Item("cb/v1/dev/dev-a/hard", payload, 4, 1, 0),  # same batch, same key
        ]
    )
    assert ing.stats.rejected == {"topic": 2}
    assert ing.stats.stored == 1 and ing.stats.duplicate == 1
    ing.catalog.close()


def test_device_prefix_ignores_other_fleets_and_acknowledges_them(settings: Settings) -> None:
    ing = HardSampleIngest(
        settings, IngestConfig(broker_url="mqtt://127.0.0.1:1", device_prefix="site-a-")
    )
    acked: list[int] = []
    ing._ack = lambda items: acked.extend(it.mid for it in items)  # type: ignore[method-assign]
    ing.process(
        [
            _Item("cb/v1/dev/site-a-1/hard", encode(_sample("site-a-1", "prefix-sample-1")), 1, 1, 0),
            _Item("cb/v1/dev/site-b-1/hard", encode(_sample("site-b-1", "prefix-sample-2")), 2, 1, 0),
        ]
    )
    assert ing.stats.stored == 1 and ing.stats.ignored == 1 and ing.stats.received == 1
    assert sorted(acked) == [1, 2]  # the other fleet's copy is not redelivered to this group
    assert set(ing._receipts) == {"site-a-1"}  # no receipt to a device this ingest ignores
    with ing.catalog.transaction() as s:
        keys = set(s.scalars(select(Sample.idempotency_key)))
    assert "prefix-sample-1" in keys and "prefix-sample-2" not in keys
    ing.catalog.close()


def test_samples_sent_while_consumer_is_down_arrive_once(settings: Settings, broker: Any) -> None:
    ing = _consumer(settings, broker, "ingest-b")
    pub = Pub(broker.port)
    try:
        pub.send("dev-z", encode(_sample("dev-z", "sample-before-0")))
        _wait(lambda: ing.stats.stored == 1)
        ing.stop()  # disconnects; the session and its subscription stay on the broker
        for n in range(20):
            pub.send("dev-z", encode(_sample("dev-z", f"sample-offline-{n:02d}")))
        ing = _consumer(settings, broker, "ingest-b")
        _wait(lambda: ing.stats.stored == 20)
        with ing.catalog.sessions() as s:
            keys = s.scalars(select(Sample.idempotency_key)).all()
        assert sorted(keys) == ["sample-before-0"] + [f"sample-offline-{n:02d}" for n in range(20)]
    finally:
        pub.close()
        ing.stop()


def test_cli_rejects_a_bad_broker_url(data_dir: Path) -> None:
    import subprocess

    cb = str(Path(sys.executable).with_name("citybrain"))
    r = subprocess.run(
        [cb, "ingest", "--broker", "http://example.org:80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "--broker" in r.stderr and "mqtt://" in r.stderr


def test_metrics_endpoint(settings: Settings, broker: Any) -> None:
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    ing = HardSampleIngest(
        settings,
        IngestConfig(broker_url=broker.url, client_id="ingest-m", batch_ms=50, metrics_port=port),
    )
    ing.start()
    pub = Pub(broker.port)
    try:
        assert ing.wait_connected(10)
        time.sleep(0.3)
        pub.send("dev-m", encode(_sample("dev-m", "sample-metrics-1")))
        pub.send("dev-m", b"{}")
        _wait(lambda: ing.stats.stored == 1 and sum(ing.stats.rejected.values()) == 1)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        lines = text.decode().splitlines()
        assert "citybrain_ingest_stored_total 1.0" in lines
        assert 'citybrain_ingest_rejected_total{reason="schema"} 1.0' in lines
    finally:
        pub.close()
        ing.stop()
