"""Reliability: D devices (default 20) x fault-injected updates (corrupt chunk,
wrong archive bytes, bad signature, unlisted file, failing golden check, unknown
artifact). Checks that no device ever loads unverified bytes, every failure
rolls back to the running model and is reported, and a good update afterwards
lands everywhere.

    .venv/bin/python benchmarks/edge_fault_bench.py [--devices 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent import Fleet  # noqa: E402
from edge_agent.protocol import Topics, encode  # noqa: E402
from tests.edge_support import (  # noqa: E402
    VIDEO,
    ChunkServer,
    Keys,
    build_package,
    client,
    desired,
    wait_for,
)

FAULTS = [
    "corrupt_chunk",
    "archive_mismatch",
    "bad_signature",
    "unlisted_file",
    "golden_fail",
    "unknown_artifact",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edge-faults-"))
    keys = Keys(root)
    (root / "rogue").mkdir()
    rogue = Keys(root / "rogue")
    srv = ChunkServer(args.port)
    prefix = f"x{uuid.uuid4().hex[:5]}"
    fleet = Fleet(
        args.devices,
        broker_url=f"mqtt://127.0.0.1:{args.port}",
        data_dir=root / "fleet",
        store_public_key=keys.path,
        source=str(VIDEO),
        prefix=prefix,
        chunk_size=2048,
        chunk_retries=1,
        chunk_timeout_s=3,
        retry_failed_s=3600,
        report_interval_s=5,
        hard={"enabled": False},
    ).start()
    devices = list(fleet.agents)
    pub = client(args.port)
    loaded_unverified = 0

    def send(rev: int, version: str, ref) -> None:  # type: ignore[no-untyped-def]
        for d in devices:
            pub.publish(
                Topics.desired(d),
                encode(desired(d, rev, [("cam1", "tiny-cls", version, ref)], fps=2)),
                qos=1,
                retain=True,
            )

    try:
        a1, ref1, _ = build_package(root, keys, version="1.0.0")
        srv.add(a1)
        t0 = time.monotonic()
        send(1, "1.0.0", ref1)
        wait_for(lambda: all(a.applied_revision == 1 for a in fleet.agents.values()), 120)
        print(f"rev 1 (good 1.0.0) on {len(devices)} devices in {time.monotonic() - t0:.2f}s")
        for rev, fault in enumerate(FAULTS, start=2):
            version = f"1.0.{rev}"
            kw = {"version": version, "bias": 0.1 * rev}
            if fault == "bad_signature":
                kw["sign_with"] = rogue
            if fault == "unlisted_file":
                kw["extra_file"] = True
            if fault == "golden_fail":
                kw["golden_shift"] = 0.5
            archive, ref, _ = build_package(root, keys, **kw)  # type: ignore[arg-type]
            if fault != "unknown_artifact":
                srv.add(archive)
            if fault == "corrupt_chunk":
                srv.corrupt[ref.sha256] = {2048}
            if fault == "archive_mismatch":
                data = bytearray(archive.read_bytes())
                data[100] ^= 0xFF
                srv.add(bytes(data), sha=ref.sha256)
            t0 = time.monotonic()
            send(rev, version, ref)

            def all_failed(rev: int = rev) -> bool:
                return all(
                    (a.last_error or "").startswith(f"revision {rev}:")
                    for a in fleet.agents.values()
                )

            wait_for(all_failed, 120)
            rolled_back = sum(
                a.applied_revision == 1
                and [k[1] for k in a.models] == ["1.0.0"]
                and a.streams["cam1"].model.manifest.version == "1.0.0"
                for a in fleet.agents.values()
            )
            bad_in_cache = sum(a.cache.has(ref.sha256) for a in fleet.agents.values())
            loaded_unverified += bad_in_cache
            reason = next(iter(fleet.agents.values())).last_error
            print(
                f"rev {rev} ({fault:16s}): {len(devices)}/{len(devices)} failed in {time.monotonic() - t0:.2f}s, "
                f"rolled back {rolled_back}/{len(devices)}, bad package kept {bad_in_cache}; e.g. {reason[:90]!r}"
            )
        a2, ref2, _ = build_package(root, keys, version="2.0.0", bias=0.7)
        srv.add(a2)
        rev = len(FAULTS) + 2
        t0 = time.monotonic()
        send(rev, "2.0.0", ref2)
        wait_for(lambda: all(a.applied_revision == rev for a in fleet.agents.values()), 120)
        print(f"rev {rev} (good 2.0.0) on {len(devices)} devices in {time.monotonic() - t0:.2f}s")
        frames = fleet.summary()["frames"]
        print(
            f"devices that ever loaded unverified bytes: {loaded_unverified}; frames inferred meanwhile: {frames}"
        )
    finally:
        fleet.stop()
        srv.close()
        for d in devices:
            for t in (Topics.desired(d), Topics.reported(d), Topics.status(d)):
                pub.publish(t, b"", qos=1, retain=True)
        time.sleep(1)
        pub.disconnect()
        pub.loop_stop()


if __name__ == "__main__":
    main()
