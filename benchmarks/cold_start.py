"""Cold start: accuracy from 10-160 labels, from-scratch vs self-supervised backbone.

    .venv/bin/python benchmarks/cold_start.py [--sets digits,street] [--epochs 15] [--seeds 3]

For each labeled set: a stratified 20% test split; SimCLR pretraining on the
rest (labels unused); then for each budget and seed a random labeled subset
trains (a) a head on the frozen self-supervised embeddings and (b) the same
encoder from scratch end to end. Full supervision = the self-supervised
backbone fine-tuned with every pool label. Also: embeddings/s of the training
code path vs a bare torch forward pass of the same encoder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack(
        [
            cv2.resize((im * 255 / 16).astype(np.uint8), (64, 64), interpolation=cv2.INTER_LINEAR)
            for im in d.images
        ]
    )
    return (
        np.repeat(imgs[..., None], 3, axis=3),
        d.target.astype(np.int64),
        [str(i) for i in range(10)],
    )


def street(n: int = 2000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from cloud.flywheel._synthetic import CLASSES, street_scenes

    x, y = street_scenes(n, seed=11)
    return x, y, list(CLASSES)


def split(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test += list(rng.choice(idx, max(1, int(0.2 * len(idx))), replace=False))
    mask = np.zeros(len(y), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def run_set(name, x, y, classes, budgets, seeds, epochs) -> dict:  # type: ignore[no-untyped-def]
    from cloud.flywheel import TrainConfig, evaluate, pretrain_simclr, train_classifier

    pool, test = split(y)
    chance = 1.0 / len(classes)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = pretrain_simclr(
            x[pool],
            Path(d) / "ssl.ckpt",
            epochs=epochs,
            seed=0,
            progress=lambda f, m: print(f"  [{name}] pretrain {m}", flush=True),
        )
    pre_s = time.perf_counter() - t0
    bb = res.backbone
    emb_pool = bb.embed(x[pool])
    rows = []
    for b in budgets:
        ssl_acc, scr_acc = [], []
        for s in range(seeds):
            rng = np.random.default_rng(100 + s)
            pick = rng.choice(len(pool), b, replace=False)
            labels = [classes[i] for i in y[pool][pick]]
            if len(set(labels)) < 2:
                continue
            m = train_classifier(
                x[pool][pick],
                labels,
                classes,
                bb,
                TrainConfig(mode="head", seed=s),
                embeddings=emb_pool[pick],
            )
            ssl_acc.append(evaluate(m.predict_proba(x[test]), y[test], classes).accuracy)
            m = train_classifier(
                x[pool][pick], labels, classes, None, TrainConfig(mode="scratch", seed=s)
            )
            scr_acc.append(evaluate(m.predict_proba(x[test]), y[test], classes).accuracy)
        rows.append((b, float(np.mean(ssl_acc)), float(np.mean(scr_acc))))
        print(
            f"  [{name}] {b:4d} labels: self-supervised {rows[-1][1]:.3f}  scratch {rows[-1][2]:.3f}",
            flush=True,
        )
    full = train_classifier(
        x[pool],
        [classes[i] for i in y[pool]],
        classes,
        bb,
        TrainConfig(mode="finetune", finetune_epochs=10),
    )
    full_acc = evaluate(full.predict_proba(x[test]), y[test], classes).accuracy
    return {
        "rows": rows,
        "full": full_acc,
        "chance": chance,
        "pretrain_s": pre_s,
        "n_pool": len(pool),
    }


def throughput(n: int = 2000) -> tuple[float, float]:
    import torch

    from cloud.flywheel import scratch_backbone
    from cloud.flywheel._backbones import normalize

    x = np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    bb = scratch_backbone()
    bb.embed(x[:256])
    t = time.perf_counter()
    bb.embed(x)
    ours = n / (time.perf_counter() - t)
    xt = torch.from_numpy(normalize(x))
    mod = bb.module.eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, 256):
            mod(xt[i : i + 256])
    bare = n / (time.perf_counter() - t)
    return ours, bare


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sets", default="digits,street")
    ap.add_argument("--budgets", default="10,20,40,80,160")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    loaders = {"digits": digits, "street": street}
    for name in a.sets.split(","):
        x, y, classes = loaders[name]()
        r = run_set(name, x, y, classes, budgets, a.seeds, a.epochs)
        print(
            f"\n{name}: {len(x)} images, {len(classes)} classes, pool {r['n_pool']}, chance {r['chance']:.3f}"
        )
        print(
            f"  pretraining: {r['pretrain_s']:.0f} s for {a.epochs} epochs; full supervision {r['full']:.3f}"
        )
        print("  labels  self-sup  scratch  gap-ratio  of-full")
        for b, s, c in r["rows"]:
            ratio = (s - r["chance"]) / max(c - r["chance"], 1e-6)
            print(f"  {b:6d}  {s:8.3f}  {c:7.3f}  {ratio:9.2f}  {s / r['full']:7.2f}")
    ours, bare = throughput()
    print(
        f"\nembeddings/s: pipeline {ours:.0f}, bare torch forward {bare:.0f}, ratio {ours / bare:.2f}"
    )


if __name__ == "__main__":
    main()
