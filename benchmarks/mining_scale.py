"""Mining at scale: seconds and peak memory to select 1,000 of N generated embeddings.

    .venv/bin/python benchmarks/mining_scale.py                 # N = 1e5 and 1e6
    .venv/bin/python benchmarks/mining_scale.py --sizes 100000  # quick

The pool is a float32 memmap [N, 256] on disk (a mixture of 200 Gaussian
clusters of unequal size plus one rare, well-separated cluster of N/100,000
points). Each (N, strategy) runs in a fresh subprocess pinned to ``--threads``
BLAS/faiss threads, so its peak RSS is its own (memmap pages it touches count).

Strategies:
- ``kcenter``: approximate k-center greedy (sample + outliers, then greedy);
- ``auto-cold``: ``auto`` with no labels and no model (typicality regime:
  k-means of 1,000 clusters on a sample + assignment of all N, typicality,
  novelty quota);
- ``auto-warm``: ``auto`` with 5,000 labels and a linear head scored over the
  whole pool in batches (uncertainty + diversity regime, class quotas,
  novelty quota). Seconds include the batched scoring.

1e7 is extrapolated linearly from the per-point cost at the largest measured N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 256


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    k = 200
    centres = rng.normal(0, 1.0, size=(k, DIM)).astype(np.float32)
    weights = rng.dirichlet(np.ones(k) * 0.5)
    rare_centre = (rng.normal(0, 1.0, size=DIM) * 4.0).astype(np.float32)
    n_rare = max(1, n // 100_000)
    x = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, DIM))
    rare_at = set(rng.choice(n, size=n_rare, replace=False).tolist())
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        c = rng.choice(k, size=e - s, p=weights)
        block = centres[c] + rng.normal(0, 0.35, size=(e - s, DIM)).astype(np.float32)
        for i in range(s, e):
            if i in rare_at:
                block[i - s] = rare_centre + rng.normal(0, 0.35, size=DIM)
        x[s:e] = block
    x.flush()
    np.save(path.with_suffix(".rare.npy"), np.asarray(sorted(rare_at)))
    np.save(path.with_suffix(".centres.npy"), centres)


def child(path: str, n: int, strategy: str, budget: int) -> None:
    import resource

    import faiss

    from cloud.flywheel.mining import LinearHead, PoolState, batched_probs, make_strategy

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    x = np.memmap(path, dtype=np.float32, mode="r", shape=(n, DIM))
    rare = np.load(Path(path).with_suffix(".rare.npy"))
    rng = np.random.default_rng(1)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t0 = time.perf_counter()
    score_s = 0.0
    if strategy == "kcenter":
        state = PoolState(embeddings=x)
        sel = make_strategy("kcenter")(state, budget, rng)
    elif strategy == "auto-cold":
        state = PoolState(embeddings=x, n_classes=10)
        sel = make_strategy("auto")(state, budget, rng)
    elif strategy == "auto-warm":
        centres = np.load(Path(path).with_suffix(".centres.npy"))[:10]
        head = LinearHead(centres.T * 0.5, np.zeros(10, np.float32))
        labeled = np.sort(rng.choice(n, size=5_000, replace=False))
        probs = np.zeros((n, 10), dtype=np.float32)
        batched_probs(x, head, out=probs)
        score_s = time.perf_counter() - t0
        labels = probs[labeled].argmax(axis=1)
        state = PoolState(embeddings=x, labeled=labeled, labels=labels, probs=probs)
        sel = make_strategy("auto")(state, budget, rng)
    else:
        raise SystemExit(f"unknown strategy {strategy}")
    secs = time.perf_counter() - t0
    assert len(np.unique(sel.indices)) == budget
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = ru.ru_maxrss / 1024
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    found = int(np.isin(sel.indices, rare).sum())
    print(
        json.dumps(
            {
                "n": n,
                "strategy": strategy,
                "seconds": secs,
                "cpu_seconds": cpu,
                "scoring_seconds": score_s,
                "peak_mb": peak_mb,
                "rare_in_pool": int(rare.size),
                "rare_found": found,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--strategies", default="kcenter,auto-cold,auto-warm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=4, metavar=("PATH", "N", "STRATEGY", "BUDGET"))
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.child[2], int(a.child[3]))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    strategies = a.strategies.split(",")
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(a.threads),
        OPENBLAS_NUM_THREADS=str(a.threads),
        MKL_NUM_THREADS=str(a.threads),
        PYTHONPATH=str(REPO),
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="mining_scale_") as tmp:
        for n in sizes:
            path = Path(tmp) / f"pool_{n}.f32"
            t = time.perf_counter()
            generate(path, n)
            print(
                f"generated {n:,} x {DIM} float32 ({n * DIM * 4 / 1e9:.2f} GB) in "
                f"{time.perf_counter() - t:.1f}s",
                flush=True,
            )
            for s in strategies:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), str(n), s, str(a.budget)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"child {n} {s} failed")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                print(
                    f"  N={n:>10,}  {s:<10} {r['seconds']:7.2f} s  (scoring "
                    f"{r['scoring_seconds']:.2f} s, CPU {r['cpu_seconds']:.1f} s)  peak {r['peak_mb']:7.0f} MB  "
                    f"rare found {r['rare_found']}/{r['rare_in_pool']}",
                    flush=True,
                )
            path.unlink()
    print()
    print(f"budget {a.budget}, dim {DIM}, {a.threads} threads")
    print(
        f"{'strategy':<10} "
        + " ".join(f"{'N=' + format(n, ','):>16}" for n in sizes)
        + f" {'N=10,000,000 (extrap.)':>24}  growth"
    )
    for s in strategies:
        rs = [r for r in results if r["strategy"] == s]
        cells = " ".join(f"{r['seconds']:>8.1f}s {r['peak_mb']:>5.0f}MB" for r in rs)
        big = rs[-1]
        extrap = big["seconds"] * 1e7 / big["n"]
        growth = ""
        if len(rs) >= 2:
            growth = (
                f"x{rs[-1]['seconds'] / rs[0]['seconds']:.1f} time for "
                f"x{rs[-1]['n'] / rs[0]['n']:.0f} pool"
            )
        print(f"{s:<10} {cells} {extrap:>22.0f}s  {growth}")


if __name__ == "__main__":
    main()
