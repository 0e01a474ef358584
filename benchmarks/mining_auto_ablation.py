"""Ablations of the ``auto`` mining strategy: its parameters and the learner.

    .venv/bin/python benchmarks/mining_auto_ablation.py '{}' '{"low": "probcover"}'
    .venv/bin/python benchmarks/mining_auto_ablation.py --trainer label-propagation '{}'

Each positional argument is a JSON object of ``auto`` parameters
(``cloud.flywheel.mining._strategies.auto``). For every set, ``random`` runs
once and each ``auto`` variant once (``--seeds`` seeds, budgets 10–320); the
line printed per variant is: labels to reach 90 % of full supervision as a
fraction of random's (the issue's target is ≤ 0.33), AULC, mean accuracy per
budget, and the budgets where it is below random.

Sets: ``dev`` (the synthetic city set drawn with seed 1, where ``auto``'s
defaults were chosen), ``devimb`` (``dev`` with every common class but ``car``
cut to 50 samples: ``car`` is 63 % of the pool), and the three sets of
``mining_label_efficiency.py`` (``digits``, ``vtest``, ``city``).

Trainers: those of the harness (``flywheel-head``, the Train button's head;
``logistic``) and, to test whether a semi-supervised learner changes the
picture, ``label-propagation``: labels spread over the pool's 10-NN graph
(Zhou et al. 2004, class-balanced seeds, α 0.9), then the harness's logistic
regression fitted on the labeled samples plus the pool's propagated labels
(their total weight equal to the labeled samples'). It is an experiment here,
not a Train button mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cloud.flywheel.mining import TRAINERS, curve_summary, simulate
from cloud.flywheel.mining._harness import TrainEvalResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mining_label_efficiency import city_set, load_set  # noqa: E402

BUDGETS = [10, 20, 40, 80, 160, 320]


def dev_set(imbalanced: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = city_set(seed=1)
    if imbalanced:
        rng = np.random.default_rng(0)
        keep = np.ones(y.size, dtype=bool)
        for c in np.unique(y):
            if c not in ("car", "fire"):
                idx = np.flatnonzero(y == c)
                keep[rng.choice(idx, idx.size - 50, replace=False)] = False
        x, y = x[keep], y[keep]
    return x, y


def label_propagation_train_eval(x_lab, y_lab, x_test, y_test, x_pool, n_classes, seed):
    import faiss
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    mu, sd = x_pool.mean(0), x_pool.std(0) + 1e-6
    zl, zt, zp = ((a - mu) / sd for a in (x_lab, x_test, x_pool))
    present = np.unique(y_lab)
    probs = np.zeros((x_pool.shape[0], n_classes), np.float32)
    if present.size == 1:
        probs[:, present[0]] = 1.0
        return TrainEvalResult(float((y_test == present[0]).mean()), probs)
    n, k = zp.shape[0], 10
    zp32 = np.ascontiguousarray(zp, np.float32)
    index = faiss.IndexFlatL2(zp.shape[1])
    index.add(zp32)
    _, at = index.search(np.ascontiguousarray(zl, np.float32), 1)  # labeled rows of the pool
    at = at[:, 0]
    d2, nb = index.search(zp32, k + 1)
    w = np.exp(-d2[:, 1:] / (np.median(d2[:, 1:]) + 1e-9))
    g = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), nb[:, 1:].ravel())), (n, n))
    g = g + g.T
    dm = sparse.diags(1.0 / np.sqrt(np.asarray(g.sum(1)).ravel() + 1e-12))
    s = dm @ g @ dm
    y0 = np.zeros((n, n_classes))
    y0[at, y_lab] = 1.0 / np.bincount(y_lab, minlength=n_classes)[y_lab]
    f = y0.copy()
    for _ in range(20):
        f = 0.9 * (s @ f) + 0.1 * y0
    f /= f.sum(1, keepdims=True) + 1e-12
    rest = np.ones(n, dtype=bool)
    rest[at] = False
    conf = f.max(1)[rest]
    x = np.concatenate([zl, zp[rest]])
    y = np.concatenate([y_lab, f.argmax(1)[rest]])
    wt = np.concatenate([np.ones(len(y_lab)), conf * len(y_lab) / max(int(rest.sum()), 1)])
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y, sample_weight=wt)
    probs[:, clf.classes_] = clf.predict_proba(zp)
    return TrainEvalResult(float((clf.predict(zt) == y_test).mean()), probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("configs", nargs="*", default=["{}"], help="JSON parameters of auto")
    ap.add_argument("--sets", default="dev,devimb,digits,vtest,city")
    ap.add_argument("--seeds", type=int, default=3)
    trainers = dict(TRAINERS, **{"label-propagation": label_propagation_train_eval})
    ap.add_argument("--trainer", default="flywheel-head", choices=sorted(trainers))
    a = ap.parse_args()
    train_eval = trainers[a.trainer]
    for name in a.sets.split(","):
        x, y = dev_set(name == "devimb") if name in ("dev", "devimb") else load_set(name)[:2]
        base = simulate(x, y, BUDGETS, ["random"], seeds=a.seeds, train_eval=train_eval)
        rnd = base["curves"]["random"]
        r = curve_summary(base)["random"]["labels_to_target"]
        print(
            f"== {name} ({a.trainer}): full supervision {base['full_supervision']:.3f}, random "
            f"needs {r if r is None else round(r)} labels; random "
            + " ".join(f"{v:.3f}" for v in rnd.values()),
            flush=True,
        )
        for cfg in a.configs:
            res = simulate(
                x,
                y,
                BUDGETS,
                ["auto"],
                seeds=a.seeds,
                train_eval=train_eval,
                strategy_cfg={"auto": json.loads(cfg)},
            )
            cur = res["curves"]["auto"]
            s = curve_summary(res)["auto"]
            got = s["labels_to_target"]
            ratio = f"{got / r:.2f}" if got and r else "n/a"
            below = [b for b in cur if cur[b] < rnd[b]] or "none"
            print(
                f"  auto {cfg:<32} ratio {ratio}  AULC {s['aulc']:.3f}  "
                + " ".join(f"{v:.3f}" for v in cur.values())
                + f"  below random at {below}",
                flush=True,
            )


if __name__ == "__main__":
    main()
