"""Detection: mAP@0.5 from few box-labeled images, from-scratch vs self-supervised backbone.

    .venv/bin/python benchmarks/detect_bench.py [--size 64] [--labels 30,90] [--seeds 1]

Synthetic street scenes (0-3 pedestrians / vehicles / cones each, boxes from
the pixels each object painted). SimCLR pretrains the citybrain encoder on an
unlabeled pool (64 px, as `citybrain pretrain` does); then for each label
budget the single-level FCOS-style detector trains on the first L labeled
scenes with (a) the encoder from scratch, (b) the self-supervised encoder
fine-tuned and (c) frozen, and is scored by mAP@0.5 on held-out scenes
through its exported ONNX (the artifact the edge agent runs).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="detector input side, px")
    ap.add_argument("--labels", default="30,90", help="labeled-image budgets")
    ap.add_argument("--test", type=int, default=60, help="held-out scenes")
    ap.add_argument("--pool", type=int, default=300, help="unlabeled scenes for SimCLR")
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--passes", type=int, default=2400, help="image passes per training run")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--modes", default="scratch,finetune,frozen")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import cv2
    import torch

    from cloud.flywheel import (
        DetectConfig,
        evaluate_detections,
        export_detector_onnx,
        pretrain_simclr,
        scratch_backbone,
        train_detector,
    )
    from cloud.flywheel._detect import decode_rows, onnx_rows
    from cloud.flywheel._synthetic import DETECT_CLASSES, street_boxes

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    s = args.size
    budgets = [int(v) for v in args.labels.split(",")]

    def norm(boxes: list[np.ndarray]) -> list[np.ndarray]:
        return [np.concatenate([b[:, :4] / s, b[:, 4:]], 1) for b in boxes]

    x_lab, b_lab = street_boxes(max(budgets), seed=21, size=s)
    x_test, b_test = street_boxes(args.test, seed=22, size=s)
    pool, _ = street_boxes(args.pool, seed=23, size=s)
    pool64 = np.stack([cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA) for im in pool])
    print(f"load: {os.getloadavg()[0]:.1f}, threads {torch.get_num_threads()}", flush=True)

    results: dict = {"size": s, "test_images": args.test, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pre = pretrain_simclr(pool64, Path(tmp) / "ssl.ckpt", epochs=args.pretrain_epochs)
        results["pretrain_s"] = round(time.perf_counter() - t0, 1)
        print(f"SimCLR on {len(pool64)} images, {pre.epochs} epochs: {results['pretrain_s']} s")
        for n in budgets:
            for seed in range(args.seeds):
                for mode in args.modes.split(","):
                    bb = scratch_backbone(seed) if mode == "scratch" else pre.backbone
                    cfg = DetectConfig(
                        input_size=s,
                        mode=mode,  # type: ignore[arg-type]
                        seed=seed,
                        epochs=max(1, round(args.passes / n)),
                    )
                    t0 = time.perf_counter()
                    det = train_detector(
                        x_lab[:n],
                        norm(b_lab[:n]),
                        DETECT_CLASSES,
                        bb,
                        cfg,
                        pretrained=mode != "scratch",
                    )
                    secs = time.perf_counter() - t0
                    onnx = export_detector_onnx(det, Path(tmp) / f"{mode}-{n}-{seed}.onnx")
                    m = evaluate_detections(
                        decode_rows(onnx_rows(onnx, x_test)), norm(b_test), DETECT_CLASSES
                    )
                    run = {
                        "labels": n,
                        "boxes": int(sum(len(b) for b in b_lab[:n])),
                        "mode": mode,
                        "seed": seed,
                        "epochs": det.config["epochs"],
                        "map50": round(m.map50, 4),
                        "ap": {k: round(v.ap or 0.0, 4) for k, v in m.per_class.items()},
                        "train_s": round(secs, 1),
                        "img_per_s": round(det.config["epochs"] * n / secs, 1),
                        "load": round(os.getloadavg()[0], 1),
                    }
                    results["runs"].append(run)
                    print(json.dumps(run), flush=True)
    print("\nmAP@0.5 (mean over seeds)")
    print(f"{'labels':>7} " + " ".join(f"{m:>9}" for m in args.modes.split(",")))
    for n in budgets:
        row = [
            np.mean([r["map50"] for r in results["runs"] if r["labels"] == n and r["mode"] == m])
            for m in args.modes.split(",")
        ]
        print(f"{n:>7} " + " ".join(f"{v:>9.3f}" for v in row))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
