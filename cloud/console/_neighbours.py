"""Nearest neighbours of a sample for its console page, read from the
flywheel's embedding stores (``<data_dir>/embeddings/<backbone>/``: ``meta.json``
with ``dim``, ``ids.txt`` one sample id a line, ``vectors.f32`` rows in that
order; see ``cloud.flywheel._pipeline.EmbeddingStore``). Read with numpy only,
so the API process does not load torch. No store holding the sample: None,
and the page shows no neighbours section at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _stores(data_dir: Path) -> list[Path]:
    root = data_dir / "embeddings"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / "meta.json").is_file() and (d / "ids.txt").is_file()]
    return sorted(found, key=lambda d: (d / "ids.txt").stat().st_mtime, reverse=True)


def nearest(
    data_dir: Path, sample_id: str, among: set[str], k: int = 12
) -> list[tuple[str, float]] | None:
    """The ``k`` samples of ``among`` most similar (cosine) to ``sample_id``,
    from the newest embedding store that has it; None when none has it."""
    for store in _stores(data_dir):
        try:
            dim = int(json.loads((store / "meta.json").read_text())["dim"])
            vec_file = store / "vectors.f32"
            rows = vec_file.stat().st_size // (4 * dim)
            ids = (store / "ids.txt").read_text().split()[:rows]
        except (OSError, ValueError, KeyError):
            continue
        index = {s: i for i, s in enumerate(ids)}
        if sample_id not in index:
            continue
        matrix = np.memmap(vec_file, np.float32, "r", shape=(len(ids), dim))
        cand = [s for s in among if s in index and s != sample_id]
        if not cand:
            return []
        vecs = np.asarray(matrix[[index[s] for s in cand]], np.float32)
        q = np.asarray(matrix[index[sample_id]], np.float32)
        norms = np.linalg.norm(vecs, axis=1) * (np.linalg.norm(q) or 1.0)
        scores = vecs @ q / np.where(norms > 0, norms, 1.0)
        top = np.argsort(-scores)[:k]
        return [(cand[i], float(scores[i])) for i in top]
    return None


__all__ = ["nearest"]
