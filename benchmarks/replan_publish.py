"""Re-planning -> desired states (issue 7, item 6): one device of 1,000 fails.

A city plan is turned into per-device desired states; then one device fails, the
instance without it is re-solved against the previous plan (churn penalty) and the
desired states are rebuilt against the previous ones. Printed: how many devices get a
new revision (i.e. are republished) versus all devices, the time to build desired
states for the whole city, and the cost of the real store's ``version_for`` query
(one per (algorithm, device) in a build).

    .venv/bin/python benchmarks/replan_publish.py [--cameras 10000 --algorithms 1000
        --devices 1000 --failures 3 --time-limit 4]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scheduler as sch  # noqa: E402
from edge_agent.protocol import ArtifactRef  # noqa: E402


class MemoryStore:
    """Every algorithm published once on ``stable`` (the store's index is timed apart)."""

    def version_for(self, algorithm: str, channel: str, device_id: str) -> str | None:
        return "1.0.0"

    def artifact_ref(self, algorithm: str, version: str) -> ArtifactRef:
        sha = f"{abs(hash(algorithm)):064x}"[-64:]
        return ArtifactRef(sha256=sha, size=1000, signature="c2ln")


def real_store_query_cost(n: int) -> float:
    """Seconds per ``AlgorithmStore.version_for`` on a real (SQLite) store index."""
    import algorithm_store as st

    with tempfile.TemporaryDirectory() as tmp:
        store = st.AlgorithmStore(Path(tmp) / "store")
        t = time.perf_counter()
        for i in range(n):
            store.version_for(f"alg-{i % 50}", "stable", f"dev-{i}")
        return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=10_000)
    ap.add_argument("--algorithms", type=int, default=1_000)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--failures", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=4.0)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} (1 min)")
    inst = sch.generate_instance(args.cameras, args.algorithms, args.devices, seed=args.seed)
    sources = {c.id: f"rtsp://cams/{c.id}" for c in inst.cameras}
    fps = {a.id: a.fps for a in inst.algorithms}
    devices = [d.id for d in inst.devices]
    store = MemoryStore()
    plan = sch.solve(inst, time_limit=args.time_limit)
    t = time.perf_counter()
    first = sch.build_desired(plan, store, sources=sources, fps=fps, devices=devices)
    build_s = time.perf_counter() - t
    n_asg = sum(len(s.assignments) for s in first.states.values())
    print(
        f"initial: {len(plan.assignments)} assignments -> {len(first.states)} desired states "
        f"({n_asg} stream assignments) built in {build_s:.2f} s"
    )
    rng = random.Random(args.seed)
    busy = sorted({a.device for a in plan.assignments})
    for failed in rng.sample(busy, min(args.failures, len(busy))):
        sub = inst.model_copy(update={"devices": [d for d in inst.devices if d.id != failed]})
        t = time.perf_counter()
        again = sch.solve(sub, previous=plan, churn_weight=1.0, time_limit=args.time_limit)
        solve_s = time.perf_counter() - t
        t = time.perf_counter()
        built = sch.build_desired(
            again, store, sources=sources, fps=fps, previous=first.states, devices=devices
        )
        diff_s = time.perf_counter() - t
        moved, added = sch.churn(plan, again)
        lost = sum(1 for a in plan.assignments if a.device == failed)
        print(
            f"device {failed} fails ({lost} assignments on it): re-solve {solve_s:.2f} s, "
            f"churn {moved} moved/removed + {added} new; desired states rebuilt in "
            f"{diff_s:.2f} s: {len(built.changed)} of {len(built.states)} devices get a new "
            f"revision (republished), {len(built.states) - len(built.changed)} unchanged"
        )
    q = real_store_query_cost(2000)
    pairs = len({(a.algorithm, a.device) for a in plan.assignments})
    print(
        f"real store index: version_for {q * 1e3:.3f} ms per query; a full build queries "
        f"{pairs} (algorithm, device) pairs = {pairs * q:.2f} s"
    )


if __name__ == "__main__":
    main()
