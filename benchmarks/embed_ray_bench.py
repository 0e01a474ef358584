"""Embedding a dataset in-process vs fanned out over Ray, on the same machine.

Imports ``--images`` generated street scenes (PNG) into a temporary catalog,
then embeds them with the seeded from-scratch encoder (64x64, 256-d) three
ways, each into its own data dir: in-process, on a local Ray with workers
receiving the image bytes, and on the same Ray with workers reading blob files
by path (``ray_blob_paths``). Prints wall time, embeddings/s, Ray start-up
time, workers and batches per node, and the largest difference to the
in-process vectors. On one machine Ray cannot beat the in-process loop (torch
already uses every core); the figures show its fixed cost, which is what
``Settings.ray_min_samples`` weighs. A cluster adds nodes, not overhead.

    .venv/bin/python benchmarks/embed_ray_bench.py [--images 2000 --batch 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="samples to embed")
    ap.add_argument("--batch", type=int, default=256, help="images per batch / Ray task")
    a = ap.parse_args()

    import cv2
    import ray

    from cloud.catalog import Catalog
    from cloud.core.config import Settings
    from cloud.flywheel._backbones import scratch_backbone
    from cloud.flywheel._ray import connect, embed_dataset
    from cloud.flywheel._synthetic import street_scenes

    scenes = street_scenes(a.images, seed=0)[0]
    pngs = [cv2.imencode(".png", cv2.cvtColor(x, cv2.COLOR_RGB2BGR))[1].tobytes() for x in scenes]
    results: dict[str, tuple[float, np.ndarray, object]] = {}
    ray_start = 0.0
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        for mode in ("in-process", "ray (bytes)", "ray (paths)"):
            settings = Settings(
                data_dir=Path(tmp) / mode.replace(" ", ""), ray_blob_paths="paths" in mode
            )
            cat = Catalog.open(settings)
            cat.create_dataset("bench", labels=["a", "b"])
            for data in pngs:
                cat.add_image_bytes("bench", data, source="synthetic")
            ids = [it.sample_id for it in cat.iter_items("bench")]
            if mode != "in-process" and not ray.is_initialized():
                t0 = time.perf_counter()
                connect(settings)
                ray_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            store, run = embed_dataset(
                cat,
                scratch_backbone(),
                ids,
                batch=a.batch,
                executor="local" if mode == "in-process" else "ray",
            )
            secs = time.perf_counter() - t0
            results[mode] = (secs, np.array(store.get(ids)), run)
            cat.close()
        ray.shutdown()

    load = os.getloadavg()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print(f"{a.images} street scenes (PNG) -> 256-d embeddings, batch {a.batch}")
    print(f"local ray.init(): {ray_start:.1f} s (paid once per process)")
    ref = results["in-process"][1]
    for mode, (secs, vecs, run) in results.items():
        diff = float(np.abs(vecs - ref).max())
        nodes = getattr(run, "nodes", {})
        extra = (
            f", {run.workers} workers, batches per node {sorted(nodes.values())}" if nodes else ""
        )  # type: ignore[attr-defined]
        print(
            f"{mode:12s}: {secs:6.1f} s, {a.images / secs:7.1f} embeddings/s, "
            f"max |diff| vs in-process {diff:.1e}{extra}"
        )


if __name__ == "__main__":
    main()
