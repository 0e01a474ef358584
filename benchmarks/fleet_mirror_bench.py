"""Fleet mirror throughput: how fast device messages reach Redis.

A private Mosquitto (free port), the real Redis (own key prefix, removed at
the end) and one in-process :class:`cloud.fleet.FleetMirror`. One publisher
sends, for D devices, a retained status and R reported states each, then E
events spread over the devices (QoS 1). Timed from the first publish to the
moment Redis holds every device and every event is counted; then
``GET``-equivalent reads (all records + overview series) are timed.

    .venv/bin/python benchmarks/fleet_mirror_bench.py
    .venv/bin/python benchmarks/fleet_mirror_bench.py --devices 1000 --reports 5 --events 20000 --timeout 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from cloud.core.config import Settings  # noqa: E402
from cloud.fleet import FleetMirror, FleetStore, MirrorConfig  # noqa: E402
from edge_agent.protocol import (  # noqa: E402
    DeviceStatus,
    Event,
    HardwareProfile,
    LoadedModel,
    ReportedState,
    StreamHealth,
    Topics,
    encode,
)
from tests.edge_support import Mosquitto, client  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--reports", type=int, default=3, help="reported states per device")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cb-fleet-bench-"))
    broker = Mosquitto(tmp / "broker", persistence=False).start()
    prefix = f"cbbench:fleet:{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp / "data",
        redis_url=a.redis_url,
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        fleet_prefix=prefix,
        events_channel=f"{prefix}:events",
    )
    mirror = FleetMirror(settings, MirrorConfig(broker_url=settings.mqtt_url, client_id="bench"))
    mirror.start()
    r = redis.Redis.from_url(a.redis_url)
    store = FleetStore(r, prefix)
    try:
        assert mirror.wait_connected(10)
        c = client(broker.port)
        hw = HardwareProfile(target="cpu-x86", cores=4, memory_mb=4096)
        model = LoadedModel(
            algorithm="a", version="1.0.0", runtime="onnxruntime-cpu", sha256="c" * 64
        )
        ids = [f"bench-{i:05d}" for i in range(a.devices)]
        total = a.devices * (1 + a.reports) + a.events
        t0 = time.perf_counter()
        for d in ids:
            st = DeviceStatus(device=d, state="online", agent_version="1", hardware=hw)
            c.publish(Topics.status(d), encode(st), qos=1, retain=True)
        for k in range(a.reports):
            for d in ids:
                rep = ReportedState(
                    device=d,
                    applied_revision=k,
                    models=[model],
                    streams=[StreamHealth(stream="s", state="running", fps=2)],
                )
                c.publish(Topics.reported(d), encode(rep), qos=1, retain=True)
        now = datetime.now(UTC)
        for i in range(a.events):
            d = ids[i % a.devices]
            ev = Event(
                id=f"ev-{i:08d}",
                device=d,
                stream="s",
                algorithm="a",
                model_version="1.0.0",
                event="e",
                detections=[],
                started_at=now,
            )
            c.publish(Topics.events(d), encode(ev), qos=1)
        t_pub = time.perf_counter() - t0
        deadline = time.monotonic() + a.timeout
        while mirror.stats.applied < total and time.monotonic() < deadline:
            time.sleep(0.05)
        t_all = time.perf_counter() - t0
        if mirror.stats.applied < total:
            print(f"TIMEOUT: mirrored {mirror.stats.applied} of {total} in {a.timeout:.0f} s")
        counted = sum(store.series(3)["events"])
        t1 = time.perf_counter()
        recs = store.all_records()
        t_read = time.perf_counter() - t1
        revs = {x.applied_revision for x in recs}
        print(
            f"messages {total} ({a.devices} devices x (1 status + {a.reports} reported) "
            f"+ {a.events} events): published in {t_pub:.1f} s, mirrored in {t_all:.1f} s "
            f"= {total / t_all:.0f} msg/s; batches {mirror.stats.batches}; "
            f"events counted {counted}; devices {len(recs)}; latest revisions {sorted(revs)}; "
            f"read all records {t_read * 1000:.0f} ms"
        )
        c.disconnect()
        c.loop_stop()
    finally:
        mirror.stop()
        broker.stop()
        keys = list(r.scan_iter(f"{prefix}:*"))
        if keys:
            r.delete(*keys)
        r.close()


if __name__ == "__main__":
    main()
