"""Label efficiency of the mining strategies, with the simulation harness.

    .venv/bin/python benchmarks/mining_label_efficiency.py
    .venv/bin/python benchmarks/mining_label_efficiency.py --sets digits --seeds 2  # quick
    .venv/bin/python benchmarks/mining_label_efficiency.py --strategies auto,random --seeds 3

Sets:
- ``digits``: sklearn's 8×8 digits (1,797 images, 10 classes), raw pixels as
  features (64-d), or with ``--extractor simclr`` SimCLR on the images;
- ``vtest``: real crops of OpenCV's ``vtest.avi`` (``../shared/data``), 1,255
  48×48 crops in 4 classes labeled by rule (``benchmarks/mining_vtest_set.py``
  says how and its limits): ``person`` 912, ``grass`` 166, ``paved_or_built``
  136 and the rarer ``group`` 41 (3.3 %);
- ``city``: a generated city-crop set (``cloud.flywheel.mining._synthetic``):
  5 common classes × 300 + a rare ``fire`` class of 15 (1%), 32×32 PNGs written
  to a temp dir and read back through the harness's default offline extractor
  (``hog-color-pca``), exactly what ``citybrain flywheel simulate`` does.

Model: the harness's default ``train_eval``, the Train button's head
(class-balanced logistic regression on standardised frozen features, retrained
each round); ``--trainer logistic`` uses sklearn's unweighted one instead,
``--extractor simclr`` pretrains SimCLR on each image set's pool first (≈ 10 min
for 30 epochs on 2 cores). ``--auto-cfg JSON`` runs ``auto`` with other
parameters (e.g. ``'{"low": "probcover"}'``) for ablations. Split: stratified 20%
test, seed 0. For each strategy: mean accuracy per budget (5 seeds), area under
the learning curve (AULC, trapezoid over the budget axis, normalised), labels
needed to reach 90% of full supervision (interpolated), and — for the city
set — in how many seeds the rare class had at least one label at each budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cloud.flywheel.mining import (
    EXTRACTORS,
    STRATEGIES,
    TRAINERS,
    curve_summary,
    extract_features,
    format_table,
    plot_curves,
    simulate,
)
from cloud.flywheel.mining._synthetic import RARE_CLASS, make_city_set

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mining_vtest_set


def _read_set(csv: Path, extractor: str, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a ``path,label`` CSV whose images are in ``images/`` beside it."""
    rows = [ln.split(",") for ln in csv.read_text().splitlines()[1:]]
    paths = [str(csv.parent / "images" / r[0]) for r in rows]
    opts = {"epochs": epochs} if extractor == "simclr" else {}
    return extract_features(extractor, paths, **opts), np.asarray([r[1] for r in rows])


def city_set(
    seed: int = 0, extractor: str = "hog-color-pca", epochs: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic city set: 5 common classes × 300 and 15 ``fire``, drawn with ``seed``."""
    with tempfile.TemporaryDirectory(prefix="city_") as tmp:
        return _read_set(
            make_city_set(tmp, n_per_class=300, n_rare=15, seed=seed), extractor, epochs
        )


def load_set(
    name: str, extractor: str = "hog-color-pca", epochs: int = 10
) -> tuple[np.ndarray, np.ndarray, str | None]:
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        if extractor != "simclr":
            return x.astype(np.float32), y, None
        import cv2

        with tempfile.TemporaryDirectory(prefix="digits_") as tmp:
            paths = [f"{tmp}/{i:04d}.png" for i in range(len(x))]
            for p, img in zip(paths, x, strict=True):
                cv2.imwrite(p, np.clip(img.reshape(8, 8) * 16, 0, 255).astype(np.uint8))
            return extract_features("simclr", paths, epochs=epochs), y, None
    if name == "city":
        return *city_set(0, extractor, epochs), RARE_CLASS
    if name == "vtest":
        from mining_vtest_set import make_vtest_set

        with tempfile.TemporaryDirectory(prefix="vtest_") as tmp:
            return *_read_set(make_vtest_set(tmp), extractor, epochs), "group"
    raise SystemExit(f"unknown set {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sets", default="digits,vtest,city")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="10,20,40,80,160,320")
    ap.add_argument(
        "--strategies",
        default=",".join(
            ["auto", "random"] + [s for s in STRATEGIES if s not in ("auto", "random")]
        ),
    )
    ap.add_argument(
        "--extractor",
        default="hog-color-pca",
        choices=sorted(EXTRACTORS),
        help="features of the image sets (digits: raw pixels unless simclr)",
    )
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--trainer", default="flywheel-head", choices=sorted(TRAINERS))
    ap.add_argument("--auto-cfg", default="{}", help="JSON parameters for auto")
    ap.add_argument("--out", help="folder for SET.json (the simulate result) and SET.png (curves)")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    names = a.strategies.split(",")
    for set_name in a.sets.split(","):
        t = time.perf_counter()
        x, y, rare = load_set(set_name, a.extractor, a.pretrain_epochs)
        found: dict[tuple[str, int], int] = defaultdict(int)

        def on_round(strategy, seed, budget, revealed, acc, rare=rare, found=found):
            if rare is not None and (revealed == rare).any():
                found[(strategy, budget)] += 1

        res = simulate(
            x,
            y,
            budgets,
            names,
            seeds=a.seeds,
            on_round=on_round,
            train_eval=TRAINERS[a.trainer],
            strategy_cfg={"auto": json.loads(a.auto_cfg)},
        )
        summ = curve_summary(res)
        if a.out:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{set_name}.json").write_text(json.dumps(res, indent=1))
            plot_curves(res, out / f"{set_name}.png")
        print(
            f"\n=== {set_name}: {x.shape[0]} samples, {x.shape[1]}-d features, "
            f"{len(np.unique(y))} classes, {a.seeds} seeds, "
            f"{time.perf_counter() - t:.0f}s ==="
        )
        print(format_table(res))
        ra, au = res["curves"]["random"], res["curves"].get("auto")
        if au is not None:
            below = [b for b in ra if au[b] < ra[b]]
            print(f"auto below random at: {', '.join(below) if below else 'no budget'}")
            r_rand = summ["random"]["labels_to_target"]
            r_auto = summ["auto"]["labels_to_target"]
            print(f"AULC: auto {summ['auto']['aulc']:.3f} vs random {summ['random']['aulc']:.3f}")
            if r_rand and r_auto:
                print(
                    f"labels to 90% of full supervision: auto {r_auto:.0f} vs random "
                    f"{r_rand:.0f} -> auto needs {r_auto / r_rand:.2f} of random's labels"
                )
            else:
                print(f"labels to 90%: auto {r_auto}, random {r_rand} (None = not reached)")
        if rare is not None:
            print(f"\nseeds (of {a.seeds}) with >=1 '{rare}' label, by budget:")
            print(f"{'strategy':<18}" + "".join(f"{b:>6}" for b in budgets))
            for n in names:
                print(f"{n:<18}" + "".join(f"{found[(n, b)]:>6}" for b in budgets))


if __name__ == "__main__":
    main()
