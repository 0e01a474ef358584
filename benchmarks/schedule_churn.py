"""Re-planning churn (issue 7): one device of 1,000 fails.

A plan for the city instance is computed; then, for several failed devices, the
instance without that device is re-solved against the previous plan with the
churn penalty. Assignments on the failed device had to move; every other
previous assignment that is not kept counts as moved beyond need (target <= 2% of
all assignments). A fresh solve without the previous plan is shown for contrast.

    .venv/bin/python benchmarks/schedule_churn.py [--cameras 10000 --algorithms 1000
        --devices 1000 --failures 3 --churn-weight 1 --time-limit 4]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scheduler as sch  # noqa: E402


def triples(plan: sch.Plan) -> set[tuple[str, str, str]]:
    return {(a.camera, a.algorithm, a.device) for a in plan.assignments}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=10_000)
    ap.add_argument("--algorithms", type=int, default=1_000)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--failures", type=int, default=3)
    ap.add_argument("--churn-weight", type=float, default=1.0)
    ap.add_argument("--time-limit", type=float, default=4.0)
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} (1 min)")
    inst = sch.generate_instance(args.cameras, args.algorithms, args.devices, seed=args.seed)
    t = time.perf_counter()
    before = sch.solve(inst, time_limit=args.time_limit)
    print(
        f"initial plan: {len(before.assignments)} assignments, objective {before.objective:g} "
        f"({before.solver.name}, {time.perf_counter() - t:.1f} s)"
    )
    old = triples(before)
    per_dev: dict[str, int] = {}
    for _, _, d in old:
        per_dev[d] = per_dev.get(d, 0) + 1
    rng = random.Random(args.seed)
    busiest = max(per_dev, key=per_dev.__getitem__)
    victims = [busiest] + rng.sample(sorted(set(per_dev) - {busiest}), k=args.failures - 1)
    worst = 0.0
    data = inst.model_dump(by_alias=True)
    for victim in victims:
        d2 = dict(data)
        d2["devices"] = [d for d in data["devices"] if d["id"] != victim]
        inst2 = sch.parse_instance(d2)
        t = time.perf_counter()
        after = sch.solve(
            inst2, time_limit=args.time_limit, previous=before, churn_weight=args.churn_weight
        )
        secs = time.perf_counter() - t
        new = triples(after)
        must = {x for x in old if x[2] == victim}
        beyond = (old - must) - new
        replaced = {(c, a) for c, a, _ in must} & {(c, a) for c, a, _ in new}
        share = len(beyond) / len(old)
        worst = max(worst, share)
        fresh = sch.solve(inst2, time_limit=args.time_limit)
        fresh_beyond = (old - must) - triples(fresh)
        print(
            f"device {victim} fails: {len(must)} assignments had to move "
            f"({len(replaced)} re-placed elsewhere); moved beyond those: {len(beyond)} "
            f"= {share:.3%} of {len(old)}; objective {before.objective:g} -> {after.objective:g} "
            f"({secs:.1f} s). Fresh solve without churn penalty: {len(fresh_beyond)} moved "
            f"beyond ({len(fresh_beyond) / len(old):.1%}), objective {fresh.objective:g}"
        )
    print(f"worst share moved beyond need: {worst:.3%} (target <= 2%: "
          f"{'MET' if worst <= 0.02 else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()
