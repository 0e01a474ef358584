"""A real labeled crop set from ``vtest.avi`` (OpenCV's sample video), labels by rule.

    .venv/bin/python benchmarks/mining_vtest_set.py OUT_DIR [--video PATH] [--every 3]

Writes ``OUT_DIR/images/*.png`` (48×48 crops) and ``OUT_DIR/labels.csv``
(``path,label``), the layout ``citybrain flywheel simulate`` reads.

How the labels are made (no hand labeling; a rule that can be checked):

1. OpenCV MOG2 background subtraction (history 200, shadows detected and
   dropped) on the frames downscaled to 384×288; the first 40 frames only warm
   the background model up. The mask is opened and closed (3×3, 7×7).
2. Every ``--every``-th frame, each connected foreground blob of at least 120 px
   whose box is not cut by the frame border becomes a *moving* crop (a square
   around the box, 20 % margin). Its label comes from the blob's shape against
   perspective: the expected height ``ĥ`` of one standing person at the blob's
   foot row is a line fitted on the blobs that are surely single people
   (height ≥ 2 × width). Blobs with height outside 0.7–1.4 ``ĥ`` get no label
   and are dropped (cut by the lamp post, legs only, merged vertically); of the
   rest:
   - ``person``: width ≤ 0.6 ``ĥ`` (one person, ~0.4 ``ĥ`` wide, legs apart);
   - ``group``: width ≥ 0.8 ``ĥ`` (people walking side by side merge into one
     blob);
   - between the two: dropped rather than guessed.
3. *Static* crops: squares of 32–64 px at random positions (seeded) whose
   dilated foreground mask is empty, labeled by colour — ``grass`` when the
   mean green exceeds both red and blue by 8, else ``paved_or_built``.

Limits: the labels are what the rule says, not what a person would say. A
person with a bag or an open coat can be wide enough to be a ``group``; two
people one behind the other stay a ``person``; consecutive picks of the same
person are near duplicates (``--every`` thins them); the static classes are
easy. A spot check of montages (16 random crops per class) looked right on
most crops; see the excerpt in ``tests/data/vtest_crops``. It measures label
*efficiency* (which samples a strategy asks for); label noise hurts every
strategy alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "vtest.avi"
SIZE = 48


def _square(x: int, y: int, w: int, h: int, margin: float, fw: int, fh: int):
    side = int(max(w, h) * (1 + margin))
    cx, cy = x + w // 2, y + h // 2
    x0 = min(max(0, cx - side // 2), max(0, fw - side))
    y0 = min(max(0, cy - side // 2), max(0, fh - side))
    return x0, y0, min(side, fw), min(side, fh)


def make_vtest_set(
    out_dir: str | Path,
    video: str | Path = DEFAULT_VIDEO,
    every: int = 3,
    static_per_frame: int = 2,
    seed: int = 0,
) -> Path:
    import cv2

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {video}")
    mog = cv2.createBackgroundSubtractorMOG2(history=200, detectShadows=True)
    k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    k7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    rng = np.random.default_rng(seed)
    blobs: list[tuple[int, np.ndarray, int, int, int]] = []  # frame, crop, w, h, feet row
    static: list[tuple[int, np.ndarray, str]] = []
    fi = -1
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        fi += 1
        small = cv2.resize(frame, (384, 288), interpolation=cv2.INTER_AREA)
        fg = mog.apply(small)
        if fi < 40 or fi % every:
            continue
        mask = (fg > 200).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k3)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k7)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        fh, fw = mask.shape
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < 120 or x == 0 or y == 0 or x + w >= fw or y + h >= fh:
                continue
            x0, y0, sw, sh = _square(x, y, w, h, 0.2, fw, fh)
            crop = cv2.resize(small[y0 : y0 + sh, x0 : x0 + sw], (SIZE, SIZE), cv2.INTER_AREA)
            blobs.append((fi, crop, w, h, y + h))
        busy = cv2.dilate(mask, k7, iterations=3)
        for _ in range(static_per_frame):
            side = int(rng.integers(32, 65))
            x0, y0 = int(rng.integers(0, fw - side)), int(rng.integers(0, fh - side))
            if busy[y0 : y0 + side, x0 : x0 + side].any():
                continue
            patch = small[y0 : y0 + side, x0 : x0 + side]
            b, g, r = patch.reshape(-1, 3).mean(axis=0)
            label = "grass" if g > r + 8 and g > b + 8 else "paved_or_built"
            static.append((fi, cv2.resize(patch, (SIZE, SIZE), cv2.INTER_AREA), label))
    cap.release()
    if not blobs:
        raise SystemExit(f"no moving blobs found in {video}")
    # perspective: a standing person's blob height grows linearly with the
    # image row of its feet; fit it on the surely-single blobs (h/w >= 2)
    feet = np.asarray([b[4] for b in blobs], dtype=np.float64)
    hts = np.asarray([b[3] for b in blobs], dtype=np.float64)
    wds = np.asarray([b[2] for b in blobs], dtype=np.float64)
    single = hts >= 2.0 * wds
    if single.sum() < 10:
        raise SystemExit("too few single-person blobs to fit the perspective")
    slope, icpt = np.polyfit(feet[single], hts[single], 1)
    h_exp = np.maximum(slope * feet + icpt, 8.0)
    rows = []
    for j, (f, crop, w, h, _) in enumerate(blobs):
        if h < 0.7 * h_exp[j] or h > 1.4 * h_exp[j]:
            continue  # cut, occluded or merged vertically: no rule, no label
        if w <= 0.6 * h_exp[j]:
            label = "person"
        elif w >= 0.8 * h_exp[j]:
            label = "group"
        else:
            continue  # ambiguous width: dropped rather than guessed
        name = f"m{j:05d}_f{f:03d}.png"
        cv2.imwrite(str(out / "images" / name), crop)
        rows.append(f"{name},{label}")
    for j, (f, crop, label) in enumerate(static):
        name = f"s{j:05d}_f{f:03d}.png"
        cv2.imwrite(str(out / "images" / name), crop)
        rows.append(f"{name},{label}")
    csv = out / "labels.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    return csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--every", type=int, default=3)
    a = ap.parse_args()
    csv = make_vtest_set(a.out_dir, a.video, a.every)
    labels = [ln.split(",")[1] for ln in csv.read_text().splitlines()[1:]]
    u, c = np.unique(labels, return_counts=True)
    print(
        f"{csv}: {len(labels)} crops, " + ", ".join(f"{k} {v}" for k, v in zip(u, c, strict=True))
    )


if __name__ == "__main__":
    main()
