"""Synthetic street scenes with ground truth, for tests, benchmarks and the demo.

Each 64x64 RGB image shows a road-like background (asphalt texture, lane
marks, random lighting) and, by class, a pedestrian (upright figure), a
vehicle (box with wheels), a traffic cone (orange triangle with a white band)
or nothing. Positions, sizes, colours and noise vary, so the task is not
trivial from raw pixels but is learnable.

:func:`street_boxes` draws several objects per scene and returns their boxes
(the bounding rectangle of the pixels each object painted) for detection.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("empty", "pedestrian", "vehicle", "cone")
#: the object classes of :func:`street_boxes`
DETECT_CLASSES = ("pedestrian", "vehicle", "cone")


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    import cv2

    base = rng.integers(60, 140)
    img = np.full((s, s, 3), base, np.float32)
    img += rng.normal(0, 12, (s, s, 1))  # asphalt grain
    tint = rng.normal(0, 10, 3)
    img += tint
    y = int(rng.integers(s // 3, 2 * s // 3))
    if rng.random() < 0.7:  # lane mark
        for x0 in range(int(rng.integers(0, 8)), s, 16):
            cv2.rectangle(img, (x0, y), (x0 + 8, y + 1), (220, 220, 220), -1)
    if rng.random() < 0.5:  # curb / sidewalk edge
        cv2.rectangle(img, (0, 0), (s, int(rng.integers(4, 14))), (150, 150, 145), -1)
    return img


def _pedestrian(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    h = int(rng.integers(s // 3, s // 2 + 6))
    x = int(rng.integers(8, s - 8))
    y = int(rng.integers(h + 2, s - 1))
    col = tuple(float(c) for c in rng.integers(0, 255, 3))
    cv2.line(img, (x, y - h + h // 4), (x, y - h // 3), col, max(2, h // 8))  # torso
    cv2.circle(img, (x, y - h + h // 8), max(2, h // 8), (200, 170, 140), -1)  # head
    cv2.line(img, (x, y - h // 3), (x - h // 6, y), col, 2)  # legs
    cv2.line(img, (x, y - h // 3), (x + h // 6, y), col, 2)


def _vehicle(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    w = int(rng.integers(s // 3, s // 2 + 8))
    h = int(w * rng.uniform(0.4, 0.6))
    x = int(rng.integers(0, s - w))
    y = int(rng.integers(h + 4, s - 4))
    col = tuple(float(c) for c in rng.integers(0, 255, 3))
    cv2.rectangle(img, (x, y - h), (x + w, y), col, -1)
    cv2.rectangle(img, (x + w // 5, y - h - h // 2), (x + 4 * w // 5, y - h), col, -1)
    cv2.rectangle(img, (x + w // 4, y - h - h // 3), (x + 3 * w // 4, y - h), (180, 200, 220), -1)
    for cx in (x + w // 5, x + 4 * w // 5):
        cv2.circle(img, (cx, y), max(2, h // 4), (20, 20, 20), -1)


def _cone(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    h = int(rng.integers(s // 5, s // 3 + 4))
    x = int(rng.integers(h, s - h))
    y = int(rng.integers(h + 2, s - 2))
    pts = np.array([[x, y - h], [x - h // 2, y], [x + h // 2, y]], np.int32)
    cv2.fillPoly(img, [pts], (float(rng.integers(230, 256)), float(rng.integers(90, 140)), 20.0))
    band = y - h // 2
    cv2.line(img, (x - h // 4, band), (x + h // 4, band), (245, 245, 245), max(1, h // 8))
    cv2.rectangle(img, (x - h // 2 - 2, y - 1), (x + h // 2 + 2, y + 1), (240, 110, 20), -1)


_DRAW = {"pedestrian": _pedestrian, "vehicle": _vehicle, "cone": _cone}


def street_scenes(
    n: int, *, seed: int = 0, size: int = 64, weights: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 RGB images [n, size, size, 3] and class indices into CLASSES.

    ``weights`` gives class frequencies (e.g. a rare class); default uniform.
    """
    import cv2

    rng = np.random.default_rng(seed)
    p = np.asarray(weights if weights is not None else [1.0] * len(CLASSES), float)
    y = rng.choice(len(CLASSES), size=n, p=p / p.sum())
    out = np.empty((n, size, size, 3), np.uint8)
    for i, c in enumerate(y):
        img = _background(rng, 96)
        name = CLASSES[c]
        if name in _DRAW:
            _DRAW[name](img, rng)
        if rng.random() < 0.3:  # a distractor blob
            cv2.circle(
                img,
                (int(rng.integers(0, 96)), int(rng.integers(0, 96))),
                int(rng.integers(2, 6)),
                tuple(float(v) for v in rng.integers(0, 255, 3)),
                -1,
            )
        img *= rng.uniform(0.7, 1.3)  # lighting
        img += rng.normal(0, 6, img.shape)
        img = cv2.resize(
            np.clip(img, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA
        )
        out[i] = img
    return out, y.astype(np.int64)


def street_boxes(
    n: int,
    *,
    seed: int = 0,
    size: int = 128,
    max_objects: int = 3,
    weights: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` uint8 RGB scenes [n, size, size, 3] with 0..``max_objects``
    objects each, and per image a float32 array [k, 5] of boxes
    (x1, y1, x2, y2 in pixels, class index into DETECT_CLASSES).

    A box is the bounding rectangle of the pixels its object painted; later
    objects may partly hide earlier ones. ``weights`` gives class frequencies.
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(weights if weights is not None else [1.0] * len(DETECT_CLASSES), float)
    out = np.empty((n, size, size, 3), np.uint8)
    boxes: list[np.ndarray] = []
    for i in range(n):
        img = _background(rng, size)
        rows = []
        for c in rng.choice(
            len(DETECT_CLASSES), size=int(rng.integers(0, max_objects + 1)), p=p / p.sum()
        ):
            before = img.copy()
            _DRAW[DETECT_CLASSES[c]](img, rng)
            ys, xs = np.nonzero((img != before).any(-1))
            if len(xs):
                rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, c])
        img *= rng.uniform(0.7, 1.3)  # lighting
        img += rng.normal(0, 6, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
        boxes.append(np.asarray(rows, np.float32).reshape(-1, 5))
    return out, boxes
