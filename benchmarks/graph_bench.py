"""City-scale knowledge graph: build time, memory, and ``applicable(camera)`` latency.

    .venv/bin/python benchmarks/graph_bench.py            # 100k cameras, 10k algorithms
    .venv/bin/python benchmarks/graph_bench.py --persist  # + save/load in SQLite

Prints one figure per line. The graph is built through the public API (every
mutation validated and indexed), so build time includes validation.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import knowledge_graph as kg  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(args: argparse.Namespace, rng: random.Random) -> kg.CityGraph:
    g = kg.CityGraph()
    events = [f"ev{i:04d}" for i in range(args.events)]
    scenes = [f"sc{i:03d}" for i in range(args.scenes)]
    targets = ["cpu-x86", "cpu-arm64", "gpu-sm72", "gpu-sm87", "gpu-sm89", "npu-rk3588"]
    for e in events:
        g.add_event(e)
    for s in scenes:
        g.add_scene(s, may_have=rng.sample(events, args.events_per_scene))
    for i in range(args.algorithms):
        g.add_algorithm(
            f"alg{i:05d}",
            version=f"{rng.randint(0, 3)}.{rng.randint(0, 9)}.0",
            detects=rng.sample(events, rng.randint(1, 3)),
            scenes=rng.sample(scenes, rng.randint(1, 3)),
            fps=rng.choice([1, 2, 5]),
            cost={
                t: {"ms_per_frame": rng.uniform(2, 60), "mem_mb": rng.uniform(50, 800)}
                for t in rng.sample(targets, rng.randint(1, 3))
            },
        )
    cams = []
    for i in range(args.cameras):
        cam = f"cam{i:06d}"
        zone = f"city/d{rng.randrange(20):02d}/s{rng.randrange(200):03d}"
        g.add_camera(cam, zone=zone, scenes=rng.sample(scenes, rng.randint(1, 3)))
        if rng.random() < 0.3:  # some cameras also carry classifier output
            g.record_inferred_scenes(cam, {rng.choice(scenes): round(rng.random(), 2)})
        cams.append(cam)
    for i in range(args.devices):
        g.add_device(
            f"edge{i:05d}",
            target=rng.choice(targets),
            ms_per_s=1000.0,
            mem_mb=8000,
            streams=16,
            reaches=rng.sample(cams, min(len(cams), args.reach)),
        )
    return g


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", type=int, default=100_000)
    p.add_argument("--algorithms", type=int, default=10_000)
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--events", type=int, default=1_000)
    p.add_argument("--events-per-scene", type=int, default=40)
    p.add_argument("--devices", type=int, default=5_000)
    p.add_argument("--reach", type=int, default=20, help="cameras each device reaches")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--persist", action="store_true", help="also time save/load in SQLite")
    args = p.parse_args()
    rng = random.Random(args.seed)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}"
    )
    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    g = build(args, rng)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_mb()
    st = g.stats()
    print(
        f"graph: {st['cameras']} cameras, {st['algorithms']} algorithms, {st['scenes']} scenes, "
        f"{st['events']} events, {st['devices']} devices, {st['zones']} zones, "
        f"{st['edges']} edges"
    )
    print(f"build_s: {build_s:.2f}")
    print(f"memory_rss_mb: {rss1 - rss0:.0f} (process rss {rss1:.0f})")

    cams = g.nodes(kg.NodeType.CAMERA)
    queries = [rng.choice(cams) for _ in range(args.queries)]
    for c in queries[:200]:  # warm up
        g.applicable(c)

    def measure(label: str) -> None:
        lat, cpu, found, paths = [], [], 0, 0
        for c in queries:
            t, tc = time.perf_counter_ns(), time.thread_time_ns()
            res = g.applicable(c)
            cpu.append((time.thread_time_ns() - tc) / 1e6)
            lat.append((time.perf_counter_ns() - t) / 1e6)
            found += len(res)
            paths += sum(len(a.hits) for a in res)
        print(
            f"applicable {label}: {args.queries} random cameras, {found / len(queries):.1f} "
            f"algorithms and {paths / len(queries):.1f} justification paths per camera"
        )
        print(
            f"applicable_ms {label}: wall p50 {pct(lat, 0.50):.3f}  p99 {pct(lat, 0.99):.3f}  "
            f"max {max(lat):.3f}  mean {statistics.fmean(lat):.3f} | thread-cpu p50 "
            f"{pct(cpu, 0.50):.3f}  p99 {pct(cpu, 0.99):.3f}"
        )

    measure("(default gc)")
    # a long-running service freezes the loaded graph out of the cyclic GC's reach
    gc.collect()
    gc.freeze()
    measure("(gc.freeze after load)")
    t = time.perf_counter_ns()
    for c in queries[:1000]:
        [a.to_dict() for a in g.applicable(c)]
    print(
        f"applicable+to_dict_ms mean: {(time.perf_counter_ns() - t) / 1e6 / 1000:.3f} (JSON-ready)"
    )

    algos = g.nodes(kg.NodeType.ALGORITHM)
    lat = []
    for c in queries[:1000]:
        res = g.applicable(c)
        a = res[0].algorithm if res and rng.random() < 0.5 else rng.choice(algos)
        t = time.perf_counter_ns()
        g.explain(c, a)
        lat.append((time.perf_counter_ns() - t) / 1e6)
    print(f"explain_ms: p50 {pct(lat, 0.50):.3f}  p99 {pct(lat, 0.99):.3f} (1000 queries)")

    t = time.perf_counter()
    doc = kg.export_instance(g)
    print(f"export_instance_s: {time.perf_counter() - t:.2f} ({len(doc['cameras'])} cameras)")

    if args.persist:
        from sqlalchemy import create_engine

        with tempfile.TemporaryDirectory() as d:
            engine = create_engine(f"sqlite:///{d}/kg.db")
            kg._persist.metadata.create_all(engine)
            t = time.perf_counter()
            kg.save(g, engine)
            print(f"save_sqlite_s: {time.perf_counter() - t:.2f}")
            del g
            gc.collect()
            t = time.perf_counter()
            g2 = kg.load(engine)
            print(f"load_sqlite_s: {time.perf_counter() - t:.2f} ({g2.stats()['edges']} edges)")
            engine.dispose()


if __name__ == "__main__":
    main()
