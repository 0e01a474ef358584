"""Import throughput and memory.

    .venv/bin/python benchmarks/import_bench.py [--n 10000] [--size 64] [--video PATH]

Generates N small JPEGs (not timed), then in fresh subprocesses imports
(a) N/5 images, (b) N images - to show peak memory does not grow with the
number of images - and (c) the video (default /work/shared/data/vtest.avi)
twice: one frame a second (the default) and every frame. Each run uses a new
SQLite catalog + blob store under a temporary data dir. Prints images/s and
peak RSS (ru_maxrss) with the RSS before the import started.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "vtest.avi"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(path: str, data_dir: str, extra: dict) -> None:
    os.environ["CITYBRAIN_DATA_DIR"] = data_dir
    from cloud.catalog import Catalog
    from cloud.core.config import Settings
    from cloud.importers import import_path

    catalog = Catalog.open(Settings(data_dir=Path(data_dir)))
    before = rss_mb()
    t0 = time.perf_counter()
    report = import_path(catalog, Path(path), "bench", **extra)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = report.added + report.existing
    print(
        json.dumps(
            {
                "samples": n,
                "added": report.added,
                "skipped": len(report.skipped),
                "frames_sampled": report.frames_sampled,
                "duplicates_removed": report.duplicates_removed,
                "seconds": round(dt, 2),
                "per_s": round(n / dt, 1),
                "frames_per_s": round(report.frames_sampled / dt, 1)
                if report.frames_sampled
                else None,
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


def generate(root: Path, n: int, size: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = root / f"{i // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        img = base.copy()
        img[i % size, :, :] = (i * 37) % 256  # unique content, realistic JPEG size
        img[:, (i // size) % size, 0] = (i * 11) % 256
        cv2.imwrite(str(d / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_child(path: Path, extra: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="cb-bench-data-") as data_dir:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path), data_dir, json.dumps(extra)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--child", nargs=3, metavar=("PATH", "DATA_DIR", "EXTRA"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]))
        return
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="cb-bench-imgs-") as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        t0 = time.perf_counter()
        generate(big, args.n, args.size)
        generate(small, max(args.n // 5, 1), args.size)
        print(
            f"generated {args.n} + {args.n // 5} {args.size}x{args.size} JPEGs in {time.perf_counter() - t0:.1f}s"
        )
        for label, root in ((f"{args.n // 5} images", small), (f"{args.n} images", big)):
            r = run_child(root, {})
            print(
                f"folder import, {label}: {r['per_s']} images/s ({r['seconds']} s), "
                f"peak RSS {r['peak_rss_mb']} MB (before import {r['rss_before_mb']} MB)"
            )
    if args.video.is_file():
        for label, extra in (("1 frame/s (default)", {}), ("every frame", {"every_k": 1})):
            r = run_child(args.video, extra)
            print(
                f"video import {args.video.name}, {label}: {r['frames_sampled']} frames sampled, "
                f"{r['duplicates_removed']} near-duplicates removed, {r['added']} samples, "
                f"{r['frames_per_s']} sampled frames/s ({r['seconds']} s), peak RSS {r['peak_rss_mb']} MB"
            )
    else:
        print(f"video {args.video} not found: skipped")


if __name__ == "__main__":
    main()
