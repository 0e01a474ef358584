"""Placement quality on 50 generated small instances (issue 7).

For each instance (20-60 cameras, 5-20 algorithms, 3-10 devices) the MILP is
solved to proven optimality; then what ``schedule solve`` returns by default
(``auto``), the heuristic alone (the city-scale path) and the plain baseline are
compared with the optimum: mean and worst ratio.

    .venv/bin/python benchmarks/schedule_quality.py [--instances 50] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scheduler as sch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--time-limit", type=float, default=60.0, help="MILP limit per instance")
    ap.add_argument("--heuristic-time", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    ratios: dict[str, list[float]] = {"auto": [], "heuristic": [], "baseline": []}
    secs: dict[str, list[float]] = {"milp": [], "auto": [], "heuristic": [], "baseline": []}
    proven = 0
    skipped = 0
    print(f"{'#':>3} {'cams':>4} {'algs':>4} {'devs':>4} {'optimum':>8} "
          f"{'auto':>8} {'heur':>8} {'base':>8}  milp s")  # fmt: skip
    for i in range(args.instances):
        n_c, n_a, n_d = rng.randint(20, 60), rng.randint(5, 20), rng.randint(3, 10)
        inst = sch.generate_instance(n_c, n_a, n_d, seed=args.seed * 1000 + i)
        t = time.perf_counter()
        opt = sch.solve(inst, solver="milp", time_limit=args.time_limit)
        secs["milp"].append(time.perf_counter() - t)
        if not opt.solver.optimal:
            print(f"{i:>3} MILP did not prove optimality in {args.time_limit}s: skipped")
            skipped += 1
            continue
        proven += 1
        row = {}
        for name, kw in (
            ("auto", {"time_limit": 10.0}),
            ("heuristic", {"time_limit": args.heuristic_time}),
            ("baseline", {}),
        ):
            t = time.perf_counter()
            plan = sch.solve(inst, solver=name, **kw)
            secs[name].append(time.perf_counter() - t)
            assert sch.check_plan(inst, plan) == []
            assert plan.objective <= opt.objective + 1e-6, (name, plan.objective, opt.objective)
            r = plan.objective / opt.objective if opt.objective > 0 else 1.0
            ratios[name].append(r)
            row[name] = plan.objective
        print(f"{i:>3} {n_c:>4} {n_a:>4} {n_d:>4} {opt.objective:>8g} {row['auto']:>8g} "
              f"{row['heuristic']:>8g} {row['baseline']:>8g}  {secs['milp'][-1]:.2f}")  # fmt: skip

    print()
    print(f"instances: {args.instances}, MILP proved optimality on {proven} (skipped {skipped})")
    for name, rs in ratios.items():
        if not rs:
            continue
        mean = statistics.fmean(rs)
        worst = min(rs)
        print(
            f"{name:>9}: mean {mean:.4f} of optimal ({(1 - mean):.2%} below), worst {worst:.4f} "
            f"({(1 - worst):.2%} below), optimal on {sum(r >= 1 - 1e-9 for r in rs)}/{len(rs)}, "
            f"mean {statistics.fmean(secs[name]):.3f}s"
        )
    print(f"     milp: mean {statistics.fmean(secs['milp']):.3f}s, max {max(secs['milp']):.3f}s")
    auto = ratios["auto"]
    if auto:
        ok = statistics.fmean(auto) >= 0.99 and min(auto) >= 0.97
        print(
            f"target (default within 1% on average, never >3% worse): {'MET' if ok else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
