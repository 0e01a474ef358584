"""Hard-sample delivery under broker outages (device side of the reliability test):
A agents (default 50) produce S hard samples in total (default 10,000) through
their SQLite outboxes while a private Mosquitto is stopped and restarted R times
(default 5). A persistent-session consumer collects the ids. Prints lost (ids
that left an outbox without reaching the consumer), MQTT-level duplicates (the
cloud ingest dedups them by idempotency key) and throughput.

    .venv/bin/python benchmarks/edge_hard_reliability.py [--agents 50] [--samples 10000] [--restarts 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent import Fleet  # noqa: E402
from edge_agent.protocol import Topics, encode  # noqa: E402
from tests.edge_support import (  # noqa: E402
    ChunkServer,
    Keys,
    Mosquitto,
    build_package,
    client,
    desired,
    wait_for,
)

CONSUMER = """
import json, sys, uuid
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-" + uuid.uuid4().hex[:6], protocol=mqtt.MQTTv5)
c.reconnect_delay_set(1, 1)
c.on_connect = lambda c, ud, fl, rc, pr: c.subscribe("cb/v1/dev/+/hard", qos=1)
def on_message(c, ud, m):
    s = json.loads(m.payload)
    out.write(s["id"] + "\\n")
    # answer as the cloud ingest does: the device deletes a sample on its receipt
    receipt = {"schema": "citybrain.hardreceipt/1", "device": s["device"], "stored": [s["id"]]}
    c.publish(f"cb/v1/dev/{s['device']}/hard/receipt", json.dumps(receipt), qos=1)
c.on_message = on_message
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
c.connect("127.0.0.1", port, clean_start=False, properties=props)
c.loop_forever(retry_first_connection=True)
"""


class Consumer:
    """A persistent-session subscriber in its own process (no GIL shared with the agents)."""

    def __init__(self, port: int, out: Path) -> None:
        self.out = out
        out.touch()
        self.proc = subprocess.Popen([sys.executable, "-c", CONSUMER, str(port), str(out)])

    def received(self) -> list[str]:
        return [line for line in self.out.read_text().splitlines() if line]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--fps", type=float, default=8.0)
    args = ap.parse_args()
    per_agent = args.samples // args.agents
    root = Path(tempfile.mkdtemp(prefix="edge-hard-"))
    # as deploy/mosquitto/mosquitto.conf: the ingest consumer's queue must hold a drain burst
    # (Mosquitto's default max_queued_messages of 1000 silently drops the excess)
    broker = Mosquitto(root / "broker", extra="max_queued_messages 100000").start()
    keys = Keys(root)
    archive, ref, _ = build_package(root, keys)
    frames = root / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(
            str(frames / f"{i}.jpg"),
            np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8),
        )
    srv = ChunkServer(broker.port)
    srv.add(archive)
    consumer = Consumer(broker.port, root / "received.txt")
    fleet = Fleet(
        args.agents,
        broker_url=f"mqtt://127.0.0.1:{broker.port}",
        data_dir=root / "fleet",
        store_public_key=keys.path,
        source=str(frames),
        prefix=f"h{uuid.uuid4().hex[:5]}",
        reconnect_min_s=1,
        reconnect_max_s=2,
        hard={
            "selectors": [
                {
                    "kind": "low_confidence",
                    "params": {"low": 0.0, "high": 1.01},
                    "limits": {"per_day": per_agent},
                }
            ],
            "max_image_side": 64,
            "budget_bytes_per_hour": 10**9,
            "outbox_max_rows": 100_000,
        },
    ).start()
    pub = client(broker.port)
    infos = [
        pub.publish(
            Topics.desired(d),
            encode(desired(d, 1, [("cam1", "tiny-cls", "1.0.0", ref)], fps=args.fps)),
            qos=1,
            retain=True,
        )
        for d in fleet.agents
    ]
    for info in infos:
        info.wait_for_publish(30)
    pub.disconnect()
    pub.loop_stop()

    def added() -> int:
        return sum(a.stats.get("outbox_added") for a in fleet.agents.values())

    t0 = time.monotonic()
    try:
        wait_for(lambda: all(a.applied_revision == 1 for a in fleet.agents.values()), 120)
        expected_time = per_agent / args.fps
        for r in range(args.restarts):
            time.sleep(expected_time / (args.restarts + 1))
            broker.stop()
            print(
                f"restart {r + 1}: broker down at {time.monotonic() - t0:.1f}s, {added()} samples produced, {len(consumer.received())} received"
            )
            time.sleep(2)
            broker.start()
        wait_for(lambda: added() >= per_agent * args.agents, 600, interval=0.5)
        t_prod = time.monotonic() - t0
        wait_for(
            lambda: all(a.outbox.count() == 0 for a in fleet.agents.values()), 300, interval=0.5
        )
        wait_for(lambda: len(set(consumer.received())) >= added(), 300, interval=0.5)
        t_all = time.monotonic() - t0
    except AssertionError as e:
        print(f"did not converge: {e}; {fleet.summary()['applied_revisions']}")
        print({d: a.last_error for d, a in fleet.agents.items() if a.last_error})
        stuck = {
            d: (a.outbox.count(), a.outbox.inflight(), len(a.session.client._out_messages))
            for d, a in fleet.agents.items()
            if a.outbox.count()
        }
        print(f"agents with rows left (rows, in flight, paho queue): {stuck}")
        t_prod = t_all = time.monotonic() - t0
    produced = added()
    dropped = sum(a.stats.get("outbox_dropped") for a in fleet.agents.values())
    left = sum(a.outbox.count() for a in fleet.agents.values())
    acked = sum(a.stats.get("hard_acked") for a in fleet.agents.values())
    got = consumer.received()
    unique = set(got)
    missing = produced - dropped - left - len(unique)
    print(f"agents {args.agents}, broker restarts {args.restarts}")
    print(
        f"produced {produced} hard samples in {t_prod:.1f}s; PUBACKed by the broker {acked}; "
        f"still in device outboxes {left}; dropped by the outbox cap {dropped}"
    )
    print(
        f"received {len(unique)} unique ({len(got) - len(unique)} MQTT-level duplicates, "
        f"deduped by id in the cloud); acked by the broker but never delivered: {missing}"
    )
    print(
        f"time until all delivered: {t_all:.1f}s ({len(unique) / t_all:.0f} samples/s end-to-end)"
    )
    fleet.stop()
    srv.close()
    consumer.close()
    broker.stop()


if __name__ == "__main__":
    main()
