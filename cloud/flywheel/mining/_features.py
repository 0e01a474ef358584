"""Offline image features for the harness (no network, no pretrained weights).

``hog-color-pca`` (fast): every image is resized to 32×32; features are
a HOG descriptor of the grey image (:func:`hog32`, 8×8 cells, 9 bins, 2×2
blocks: 324 values) and
the 8×8 downsampled colour image (192 values); the concatenation is
standardised over the pool and reduced by PCA to at most 64 dimensions. The
PCA is fitted on the unlabeled images only — no label is used — so it plays
the role of the self-supervised backbone of issue 5 until that backbone
plugs in here (:data:`EXTRACTORS`).

``simclr`` (``citybrain flywheel simulate``'s default): issue 5's
self-supervised SimCLR pretraining run on the pool's own images (64×64, CPU),
then its encoder's 256-d embeddings — "self-supervised pretraining on the pool
is part of the run". Slower (≈ 10 min for 1,500 images at 30 epochs on 2
cores), but it ranks strategies as the flywheel will see them: on the vtest
crops hog features put ``auto`` below random at 10–20 labels, SimCLR features
do not (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from ._types import MiningInputError

#: name -> (paths, progress) -> float32 [N, D]
Extractor = Callable[[Sequence[str | os.PathLike], Callable[[int, int], None] | None], np.ndarray]


def hog32(grey: np.ndarray) -> np.ndarray:
    """HOG of a 32×32 grey image: 8×8 cells, 9 unsigned orientation bins,
    2×2-cell blocks with stride one cell, L2-Hys normalised (324 values)."""
    g = grey.astype(np.float32)
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1, :] = g[2:, :] - g[:-2, :]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    pos = ang / 20.0 - 0.5  # bin centres at 10, 30, ... 170 degrees
    lo = np.floor(pos).astype(np.int64)
    w_hi = pos - lo
    cells = np.zeros((4, 4, 9), dtype=np.float32)
    cy, cx = np.divmod(np.arange(32 * 32), 32)
    cy, cx = cy // 8, cx // 8
    m, lo, w_hi = mag.ravel(), lo.ravel(), w_hi.ravel()
    np.add.at(cells, (cy, cx, lo % 9), m * (1.0 - w_hi))
    np.add.at(cells, (cy, cx, (lo + 1) % 9), m * w_hi)
    blocks = []
    for by in range(3):
        for bx in range(3):
            v = cells[by : by + 2, bx : bx + 2].ravel()
            v = v / np.sqrt((v * v).sum() + 1e-6)
            v = np.minimum(v, 0.2)
            blocks.append(v / np.sqrt((v * v).sum() + 1e-6))
    return np.concatenate(blocks)


def _raw_hog_color(path: str | os.PathLike) -> np.ndarray:
    import cv2

    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MiningInputError(f"cannot read image {os.fspath(path)!r}", field="images")
    small = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    h = hog32(grey)
    col = cv2.resize(small, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
    return np.concatenate([h, col]).astype(np.float32)


def hog_color_pca(
    paths: Sequence[str | os.PathLike],
    progress: Callable[[int, int], None] | None = None,
    dims: int = 64,
) -> np.ndarray:
    from sklearn.decomposition import PCA

    rows = []
    for i, p in enumerate(paths):
        rows.append(_raw_hog_color(p))
        if progress:
            progress(i + 1, len(paths))
    raw = np.stack(rows)
    raw = (raw - raw.mean(axis=0)) / (raw.std(axis=0) + 1e-6)
    k = int(min(dims, raw.shape[0] - 1, raw.shape[1]))
    return PCA(n_components=k, random_state=0).fit_transform(raw).astype(np.float32)


def load_rgb(paths: Sequence[str | os.PathLike], size: int = 64) -> np.ndarray:
    """uint8 RGB images ``[N, size, size, 3]`` (area-resized)."""
    import cv2

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        img = cv2.imread(os.fspath(p), cv2.IMREAD_COLOR)
        if img is None:
            raise MiningInputError(f"cannot read image {os.fspath(p)!r}", field="images")
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return out


def simclr_pool(
    paths: Sequence[str | os.PathLike],
    progress: Callable[[int, int], None] | None = None,
    epochs: int = 10,
    checkpoint: str | os.PathLike | None = None,
) -> np.ndarray:
    """Self-supervised pretraining on the pool itself (issue 5's SimCLR,
    :func:`cloud.flywheel.pretrain_simclr`, CPU-friendly, 64×64 crops), then
    the trained encoder's embeddings. No labels, no downloads. ``checkpoint``
    (optional) makes the pretraining resumable; a temp file otherwise."""
    import tempfile
    from pathlib import Path

    from cloud.flywheel import pretrain_simclr

    images = load_rgb(paths)
    if progress:
        progress(0, epochs)

    def step(frac: float, _msg: str) -> None:
        if progress:
            progress(round(frac * epochs), epochs)

    if checkpoint is not None:
        res = pretrain_simclr(images, Path(checkpoint), epochs=epochs, progress=step)
        return res.backbone.embed(images)
    with tempfile.TemporaryDirectory(prefix="simclr_") as tmp:
        res = pretrain_simclr(images, Path(tmp) / "pool.pt", epochs=epochs, progress=step)
        return res.backbone.embed(images)


EXTRACTORS: dict[str, Extractor] = {"hog-color-pca": hog_color_pca, "simclr": simclr_pool}


def extract_features(
    name: str,
    paths: Sequence[str | os.PathLike],
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> np.ndarray:
    try:
        fn = EXTRACTORS[name]
    except KeyError:
        raise MiningInputError(
            f"unknown feature extractor {name!r}; one of {', '.join(sorted(EXTRACTORS))}",
            field="extractor",
        ) from None
    return fn(paths, progress, **options)
