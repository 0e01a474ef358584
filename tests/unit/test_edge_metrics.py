"""The agent's Prometheus ``/metrics``: scraped over HTTP from a running agent
(packages fetched over HTTP Range, no broker reachable) and parsed with
prometheus_client's parser; the hand-written exposition format; the port
setting (off by default, off in the fleet simulator, a taken port is a clear
error)."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import Agent, ConfigError, Fleet, load_config
from edge_agent._metrics import Histogram, format_family, format_histogram
from edge_agent.protocol import HardwareProfile
from tests.conftest import free_port
from tests.edge_support import ArtifactHttpServer, Keys, build_package, desired, wait_for

HW = HardwareProfile(target="cpu-test", cpu="test", cores=1, memory_mb=512)


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], family: str, sample: str | None = None) -> list[Any]:
    return [s for s in fams[family].samples if sample is None or s.name == sample]


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    hits = [s.value for s in samples(fams, family, sample) if labels.items() <= s.labels.items()]
    assert len(hits) == 1, (family, labels, samples(fams, family, sample))
    return hits[0]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    keys = Keys(tmp_path)
    http = ArtifactHttpServer()
    agents: list[Agent] = []

    def agent(**over: Any) -> Agent:
        dev = f"m-{uuid.uuid4().hex[:8]}"
        settings: dict[str, Any] = {
            # nothing listens there: the session keeps retrying, the agent runs anyway
            "broker_url": f"mqtt://127.0.0.1:{free_port()}",
            "data_dir": tmp_path / dev,
            "store_public_key": keys.path,
            "fetch_mode": "http",
            "http_base_url": http.url,
            "report_interval_s": 0.5,
            "retry_failed_s": 120,
            "ort_threads": 1,
            **over,
        }
        a = Agent(load_config(None, device_id=dev, **settings), hardware=HW).start()
        agents.append(a)
        return a

    def package(**kw: Any) -> Any:
        archive, ref, manifest = build_package(tmp_path, keys, **kw)
        http.artifacts[ref.sha256] = archive.read_bytes()
        return ref

    yield agent, package, keys, tmp_path
    for a in agents:
        a.stop(graceful=False)
    http.close()


def test_scrape_a_running_agent(rig: Any) -> None:
    agent_of, package, keys, root = rig
    port = free_port()
    agent = agent_of(metrics_port=port)
    ref = package(version="1.0.0")
    agent.offer(desired(agent.device, 1, [("cam-1", "tiny-cls", "1.0.0", ref)], fps=30.0))
    wait_for(lambda: agent.applied_revision == 1 and agent.streams["cam-1"].frames >= 5, 60)
    # a forged package: the update fails, counted by reason, the old model keeps running
    bad = package(version="1.1.0", sign_with=Keys(root))
    agent.offer(desired(agent.device, 2, [("cam-1", "tiny-cls", "1.1.0", bad)], fps=30.0))
    wait_for(lambda: agent.stats.get("applies_failed") == 1, 60)

    fams = scrape(port)
    assert value(fams, "citybrain_edge_info", device=agent.device) == 1
    assert value(fams, "citybrain_edge_mqtt_connected") == 0
    assert value(fams, "citybrain_edge_applied_revision") == 1
    assert value(fams, "citybrain_edge_model_info", algorithm="tiny-cls", version="1.0.0") == 1
    assert value(fams, "citybrain_edge_stream_model_info", stream="cam-1", version="1.0.0") == 1
    assert value(fams, "citybrain_edge_frames", "citybrain_edge_frames_total", stream="cam-1") >= 5
    assert value(fams, "citybrain_edge_frames_per_second", stream="cam-1") >= 0
    assert value(fams, "citybrain_edge_dropped_frames", stream="cam-1") >= 0
    # histogram: cumulative buckets ending in +Inf == count; the sum is positive
    buckets = [
        s for s in samples(fams, "citybrain_edge_inference_seconds") if s.name.endswith("_bucket")
    ]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
    n = value(fams, "citybrain_edge_inference_seconds", "citybrain_edge_inference_seconds_count")
    assert n == counts[-1] >= 5
    assert (
        value(fams, "citybrain_edge_inference_seconds", "citybrain_edge_inference_seconds_sum") > 0
    )
    assert {s.labels["state"] for s in samples(fams, "citybrain_edge_outbox_depth")} == {
        "queued",
        "sending",
        "sent",
    }
    assert value(fams, "citybrain_edge_outbox_dropped") == 0
    assert value(fams, "citybrain_edge_fetch_bytes") >= ref.size
    assert value(fams, "citybrain_edge_updates", result="ok") == 1
    assert value(fams, "citybrain_edge_updates", result="failed") == 1
    assert value(fams, "citybrain_edge_update_failures", reason="signature_invalid") == 1
    assert value(fams, "citybrain_edge_counter", name="applies_ok") == 1

    # only /metrics is served
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert e.value.code == 404


def test_metrics_off_by_default_and_in_the_fleet(rig: Any, tmp_path: Path) -> None:
    agent_of, _, keys, _ = rig
    assert agent_of().metrics is None
    assert agent_of(metrics_port=0).metrics is None
    fleet = Fleet(
        2,
        broker_url=f"mqtt://127.0.0.1:{free_port()}",
        data_dir=tmp_path / "fleet",
        store_public_key=keys.path,
        prefix=f"f{uuid.uuid4().hex[:6]}",
    )
    try:
        fleet.start()
        assert all(a.cfg.metrics_port is None and a.metrics is None for a in fleet.agents.values())
    finally:
        for a in list(fleet.agents.values()):
            a.stop(graceful=False)


def test_a_taken_metrics_port_is_a_config_error(rig: Any) -> None:
    agent_of, *_ = rig
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="metrics_port"):
            agent_of(metrics_port=s.getsockname()[1])


def test_exposition_format_escapes_and_histogram() -> None:
    text = format_family(
        "x_events", "counter", 'help with "quotes"\nand a newline', [({"why": 'a"b\\c\nd'}, 3)]
    )
    assert "x_events_total{" in text and "# TYPE x_events_total counter" in text
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    text += format_histogram("x_latency_seconds", "latency", [({"stream": "s"}, h)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    (ev,) = fams["x_events"].samples
    assert ev.labels == {"why": 'a"b\\c\nd'} and ev.value == 3
    by = {s.labels.get("le"): s.value for s in fams["x_latency_seconds"].samples}
    assert by["0.1"] == 2 and by["1.0"] == 3 and by["+Inf"] == 4
    total = [s.value for s in fams["x_latency_seconds"].samples if s.name.endswith("_sum")]
    assert math.isclose(total[0], 7.65)
    with pytest.raises(ValueError):
        format_family("bad name", "gauge", "", [])
    with pytest.raises(ValueError):
        format_family("x", "summary", "", [])
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
