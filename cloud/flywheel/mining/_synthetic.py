"""A synthetic city-crop set with ground truth, for tests, demos and benchmarks.

32×32 crops drawn with OpenCV on a noisy road background: ``car``, ``bus``,
``pedestrian``, ``bicycle``, ``road`` (empty road with a lane mark) and the
rare ``fire`` (a flickering orange blob). Positions, sizes, colours, lighting
and noise vary per image; everything is a function of the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COMMON_CLASSES = ("car", "bus", "pedestrian", "bicycle", "road")
RARE_CLASS = "fire"


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(60, 150)
    img = np.full((32, 32, 3), base, dtype=np.float32)
    img += rng.normal(0, 8, size=(32, 32, 1))
    img += rng.normal(0, 3, size=(32, 32, 3))
    return img


def draw(cls: str, rng: np.random.Generator) -> np.ndarray:
    """One BGR uint8 32×32 crop of class ``cls``."""
    import cv2

    img = _background(rng)
    j = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    col = tuple(float(c) for c in rng.integers(20, 235, size=3))
    if cls == "car":
        x, y, w, h = j(3, 8), j(10, 15), j(16, 22), j(7, 10)
        cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        cv2.rectangle(img, (x + 4, y - 4), (x + w - 4, y), col, -1)
        for cx in (x + 4, x + w - 4):
            cv2.circle(img, (cx, y + h), 3, (20, 20, 20), -1)
    elif cls == "bus":
        x, y, w, h = j(1, 3), j(6, 10), j(26, 29), j(14, 18)
        cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        for wx in range(x + 2, x + w - 4, 6):
            cv2.rectangle(img, (wx, y + 2), (wx + 4, y + 6), (230, 220, 200), -1)
        for cx in (x + 5, x + w - 5):
            cv2.circle(img, (cx, y + h), 3, (20, 20, 20), -1)
    elif cls == "pedestrian":
        cx, top = j(11, 20), j(3, 7)
        cv2.circle(img, (cx, top + 3), 3, (150, 170, 200), -1)
        cv2.ellipse(img, (cx, top + 14), (3, 8), 0, 0, 360, col, -1)
        cv2.line(img, (cx, top + 20), (cx - 3, top + 26), col, 2)
        cv2.line(img, (cx, top + 20), (cx + 3, top + 26), col, 2)
    elif cls == "bicycle":
        y, x = j(18, 22), j(6, 10)
        r = j(4, 6)
        cv2.circle(img, (x, y), r, (25, 25, 25), 1)
        cv2.circle(img, (x + 14, y), r, (25, 25, 25), 1)
        cv2.line(img, (x, y), (x + 7, y - 7), col, 2)
        cv2.line(img, (x + 7, y - 7), (x + 14, y), col, 2)
        cv2.line(img, (x + 7, y - 7), (x + 7, y - 11), col, 2)
    elif cls == "road":
        y = j(12, 20)
        for x in range(j(0, 4), 32, 10):
            cv2.rectangle(img, (x, y), (x + 5, y + 1), (220, 220, 220), -1)
    elif cls == RARE_CLASS:
        cx, cy = j(10, 22), j(12, 22)
        for _ in range(6):
            r = j(3, 8)
            c = (float(rng.integers(0, 60)), float(rng.integers(90, 200)), 250.0)
            cv2.circle(img, (cx + j(-3, 3), cy + j(-5, 3)), r, c, -1)
        cv2.circle(img, (cx, cy), 3, (120, 240, 255), -1)
    else:
        raise ValueError(f"unknown class {cls!r}")
    img *= rng.uniform(0.7, 1.3)  # lighting
    return np.clip(img, 0, 255).astype(np.uint8)


def make_city_set(
    out_dir: str | Path,
    n_per_class: int = 100,
    n_rare: int = 10,
    seed: int = 0,
) -> Path:
    """Write the crops as PNG under ``out_dir/images`` and ``out_dir/labels.csv``
    (header ``path,label``); returns the CSV path."""
    import cv2

    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    plan = [c for c in COMMON_CLASSES for _ in range(n_per_class)] + [RARE_CLASS] * n_rare
    for i, cls in enumerate(plan):
        name = f"{cls}_{i:05d}.png"
        if not cv2.imwrite(str(img_dir / name), draw(cls, rng)):
            raise OSError(f"could not write {img_dir / name}")
        rows.append(f"{name},{cls}")
    csv_path = out / "labels.csv"
    csv_path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return csv_path
