"""Update propagation: N simulated agents (real edge_agent agents, threads of this
process) on a real broker; one new model published to all of them. Prints the
time until 50% / 99% / 100% report it, and bytes fetched per device relative to
the artifact (target <= 1.05x).

    .venv/bin/python benchmarks/edge_propagation_bench.py [--devices 200] [--port 1883]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent import ProcessFleet  # noqa: E402
from edge_agent.protocol import Topics, encode  # noqa: E402
from tests.edge_support import (  # noqa: E402
    ChunkServer,
    Keys,
    build_package,
    client,
    convnet_onnx,
    desired,
    wait_for,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--width", type=int, default=16, help="CNN width (16 -> ~1 MB artifact)")
    ap.add_argument("--chunk-kb", type=int, default=256)
    ap.add_argument("--per-process", type=int, default=100, help="agents per child process")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--real-store",
        action="store_true",
        help="build/sign with algorithm_store and serve with its ChunkService",
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edge-prop-"))
    onnx_path = root / "m.onnx"
    convnet_onnx(onnx_path, side=64, width=args.width)
    frames = root / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.jpg"), np.full((120, 160, 3), 90, np.uint8))
    labels = [f"c{i}" for i in range(10)]
    if args.real_store:
        from algorithm_store import AlgorithmStore, ChunkService, keygen, load_private_key
        from algorithm_store import build_package as store_build

        key_path = keygen(root / "keys")
        private = load_private_key(key_path)
        store = AlgorithmStore(root / "store", private_key=private)
        built = store_build(
            onnx_path,
            id="prop",
            version="1.0.0",
            task="classify",
            labels=labels,
            private_key=private,
            out_dir=root / "out",
            profile=False,
        )
        store.publish(built.archive)
        ref = store.artifact_ref("prop", "1.0.0")
        public_key = key_path.with_name(key_path.name + ".pub")
        srv = ChunkService(store, f"mqtt://127.0.0.1:{args.port}").start()

        def served() -> list[float]:
            return [srv.stats.bytes_sent / args.devices]  # the store counts totals only

    else:
        keys = Keys(root)
        public_key = keys.path
        archive, ref, _ = build_package(
            root, keys, algorithm="prop", onnx_file=onnx_path, side=64, labels=labels
        )
        srv = ChunkServer(args.port)
        srv.add(archive)

        def served() -> list[float]:
            return [float(srv.bytes_sent[d]) for d in devices]

    prefix = f"p{uuid.uuid4().hex[:5]}"
    t_start = time.monotonic()
    fleet = ProcessFleet(
        args.devices,
        per_process=args.per_process,
        broker_url=f"mqtt://127.0.0.1:{args.port}",
        data_dir=root / "fleet",
        store_public_key=public_key,
        source=str(frames),
        prefix=prefix,
        interval=0.5,
        chunk_size=args.chunk_kb * 1024,
        report_interval_s=30,
        hard={"enabled": False},
    ).start()
    devices = [f"{prefix}-{i:04d}" for i in range(args.devices)]
    wanted = set(devices)
    done: dict[str, float] = {}
    lock = threading.Lock()

    def on_msg(c, ud, msg):  # type: ignore[no-untyped-def]
        if not msg.payload:
            return
        r = json.loads(msg.payload)
        if (
            r["device"] in wanted
            and r["applied_revision"] == 1
            and any(m["version"] == "1.0.0" for m in r["models"])
        ):
            with lock:
                done.setdefault(r["device"], time.monotonic())

    watcher = client(args.port)
    watcher.on_message = on_msg
    watcher.subscribe("cb/v1/dev/+/reported", qos=1)
    try:
        wait_for(lambda: fleet.summary()["connected"] == args.devices, 180, interval=0.5)
        print(
            f"{args.devices} agents connected in {time.monotonic() - t_start:.1f}s; artifact {ref.size} bytes"
        )
        pub = client(args.port)
        t0 = time.monotonic()
        infos = [
            pub.publish(
                Topics.desired(d),
                encode(desired(d, 1, [("cam1", "prop", "1.0.0", ref)], fps=0.2)),
                qos=1,
                retain=True,
            )
            for d in devices
        ]
        for i in infos:
            i.wait_for_publish(30)
        t_pub = time.monotonic() - t0
        need99 = math.ceil(0.99 * args.devices)
        wait_for(lambda: len(done) >= need99, args.timeout, interval=0.1)
        try:
            wait_for(lambda: len(done) >= args.devices, 30, interval=0.1)
        except AssertionError:
            pass
        times = sorted(t - t0 for t in done.values())
        agent_bytes = fleet.summary()["counters"].get("bytes_fetched", 0)
        sent = served()
        print(f"desired published to all in {t_pub:.2f}s")
        print(
            f"50% reported: {times[len(times) // 2]:.2f}s   99% ({need99}): {times[need99 - 1]:.2f}s   "
            f"all ({len(times)}/{args.devices}): {times[-1]:.2f}s"
        )
        print(
            f"bytes per device / artifact: store sent mean {np.mean(sent) / ref.size:.4f}, max {max(sent) / ref.size:.4f} "
            f"(agents counted {agent_bytes / args.devices / ref.size:.4f}); target <= 1.05"
        )
        print(
            f"chunk size {args.chunk_kb} KiB; store: {'algorithm_store' if args.real_store else 'test'} "
            f"chunk service; "
            f"errors {fleet.summary()['errors']}"
        )
    finally:
        fleet.stop()
        if args.real_store:
            srv.stop()
        else:
            srv.close()
        pub2 = client(args.port)
        for d in devices:
            for t in (Topics.desired(d), Topics.reported(d), Topics.status(d)):
                pub2.publish(t, b"", qos=1, retain=True)
        time.sleep(1)
        for c in (watcher, pub2):
            c.disconnect()
            c.loop_stop()


if __name__ == "__main__":
    main()
