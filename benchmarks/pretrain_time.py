"""Self-supervised pretraining time on 5,000 images to a useful embedding (issue 5).

    .venv/bin/python benchmarks/pretrain_time.py [--pool 5000] [--epochs 8] [--labels 100]

Synthetic street scenes (64x64, 4 classes): a pool of ``--pool`` images for SimCLR
(labels unused) and a held-out test set. Pretraining runs epoch by epoch (the same
resumable ``pretrain_simclr`` the Pretrain button runs); after each epoch a head on
the frozen embeddings is trained with ``--labels`` random labels (3 seeds) and tested.
"Useful" = the head's accuracy is within 2 points of the last epoch's and above the
from-scratch encoder trained end to end on the same labels. Prints wall time per epoch
(cumulative), the accuracy curve and the time to a useful embedding; ``--plot`` draws it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    from cloud.flywheel import TrainConfig, evaluate, pretrain_simclr, train_classifier
    from cloud.flywheel._synthetic import CLASSES, street_scenes

    classes = list(CLASSES)
    x, y = street_scenes(args.pool + args.test, seed=11)
    pool, test = np.arange(args.pool), np.arange(args.pool, args.pool + args.test)
    print(
        f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; pool {args.pool}, "
        f"test {args.test}, {args.labels} labels, {args.epochs} epochs",
        flush=True,
    )

    def head_accuracy(backbone) -> float:  # type: ignore[no-untyped-def]
        emb = backbone.embed(x[pool])
        accs = []
        for s in range(3):
            pick = np.random.default_rng(100 + s).choice(len(pool), args.labels, replace=False)
            m = train_classifier(
                x[pool][pick],
                [classes[i] for i in y[pool][pick]],
                classes,
                backbone,
                TrainConfig(mode="head", seed=s),
                embeddings=emb[pick],
            )
            accs.append(evaluate(m.predict_proba(x[test]), y[test], classes).accuracy)
        return float(np.mean(accs))

    scratch = []
    for s in range(3):
        pick = np.random.default_rng(100 + s).choice(len(pool), args.labels, replace=False)
        m = train_classifier(
            x[pool][pick],
            [classes[i] for i in y[pool][pick]],
            classes,
            None,
            TrainConfig(mode="scratch", seed=s),
        )
        scratch.append(evaluate(m.predict_proba(x[test]), y[test], classes).accuracy)
    scratch_acc = float(np.mean(scratch))
    print(f"from scratch, {args.labels} labels: {scratch_acc:.3f}", flush=True)

    curve: list[tuple[int, float, float]] = []  # epoch, cumulative pretrain s, accuracy
    spent = 0.0
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "ssl.ckpt"
        for e in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            res = pretrain_simclr(x[pool], ckpt, epochs=e, seed=0)  # resumes epoch e-1
            spent += time.perf_counter() - t0
            acc = head_accuracy(res.backbone)
            curve.append((e, spent, acc))
            print(
                f"epoch {e}: pretraining {spent:6.1f} s, head on {args.labels} labels {acc:.3f} "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    final = curve[-1][2]
    useful = next((c for c in curve if c[2] >= final - 0.02 and c[2] > scratch_acc), None)
    if useful is None:
        print("no epoch reached a useful embedding")
    else:
        print(
            f"useful embedding after epoch {useful[0]}: {useful[1]:.0f} s of pretraining on "
            f"{args.pool} images (head {useful[2]:.3f} vs scratch {scratch_acc:.3f}; "
            f"last epoch {final:.3f}); target <= 600 s -> "
            + ("OK" if useful[1] <= 600 else "MISSES")
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c[1] for c in curve], [c[2] for c in curve], "o-", label="self-supervised head")
        ax.axhline(scratch_acc, color="gray", ls="--", label="from scratch")
        ax.set_xlabel("pretraining wall time (s)")
        ax.set_ylabel(f"test accuracy, {args.labels} labels")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
