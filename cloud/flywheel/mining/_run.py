"""Resumable mining runs and the hand-off to an annotation task.

A :class:`MiningRun` lives in a directory: ``run.json`` (what the run is),
``probs.f32`` (the pool's class probabilities, a memmap filled batch by batch),
``done.u8`` (one flag per scored batch, flushed after the batch's rows) and,
once finished, ``selection.json``. Killing the process at any point loses at
most the batch being scored; running the same run again resumes from the
first unscored batch and returns the same selection.

A run scores with a :class:`LinearHead` on the embeddings, or takes
probabilities computed elsewhere (``probs=``, e.g. a model's ONNX on the
images, with ``probs_key`` naming the model in the checkpoint), or has none
(the cold start).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from ._scale import DEFAULT_BATCH, batched_probs, iter_batches
from ._strategies import make_strategy
from ._types import MiningInputError, PoolState, RunConflict, Selection

RUN_SCHEMA = 1


class LinearHead:
    """Softmax linear head on embeddings (``x @ weight + bias``): the cold-start
    model, picklable so Ray workers can run it."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[1],):
            raise MiningInputError("head weight must be [D, C] and bias [C]", field="head")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.weight + self.bias
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[1])

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.weight.tobytes())
        h.update(self.bias.tobytes())
        return h.hexdigest()


def _pool_fingerprint(x: np.ndarray) -> str:
    h = hashlib.sha256(f"{x.shape}|{x.dtype}".encode())
    for i in np.linspace(0, x.shape[0] - 1, num=min(64, x.shape[0])).astype(np.int64):
        h.update(np.asarray(x[i]).tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MiningRun:
    """Score the pool with ``head`` (checkpointed) or take precomputed ``probs``
    (``[N, C]``, an ``np.memmap`` works; ``probs_key`` identifies the model that
    made them), then select ``budget`` samples."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        embeddings: np.ndarray,
        *,
        budget: int,
        strategy: str = "auto",
        strategy_cfg: dict | None = None,
        seed: int = 0,
        head: LinearHead | None = None,
        probs: np.ndarray | None = None,
        probs_key: str | None = None,
        labeled: Iterable[int] = (),
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        excluded: Iterable[int] = (),
        batch: int = DEFAULT_BATCH,
        use_ray: bool = False,
    ) -> None:
        self.dir = Path(workdir)
        self.x = embeddings
        self.budget = int(budget)
        self.strategy = strategy
        self.strategy_cfg = dict(strategy_cfg or {})
        make_strategy(strategy, **self.strategy_cfg)  # fail before any compute
        self.seed = int(seed)
        self.head = head
        if head is not None and probs is not None:
            raise MiningInputError("give a head or precomputed probs, not both", field="probs")
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != embeddings.shape[0]):
            raise MiningInputError(
                f"probs must have shape [{embeddings.shape[0]}, C], got {probs.shape}",
                field="probs",
            )
        if probs is not None and probs_key is None:
            raise MiningInputError(
                "precomputed probs need a probs_key naming the model that made them",
                field="probs_key",
            )
        self.probs = probs
        self.labeled = np.asarray(list(labeled), dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.excluded = np.asarray(list(excluded), dtype=np.int64)
        self.batch = int(batch)
        self.use_ray = use_ray
        self.n_batches = len(list(iter_batches(embeddings.shape[0], self.batch)))
        if head is not None and head.weight.shape[0] != embeddings.shape[1]:
            raise MiningInputError(
                f"head expects {head.weight.shape[0]}-d embeddings, pool has {embeddings.shape[1]}",
                field="head",
            )
        self.spec = {
            "schema": RUN_SCHEMA,
            "n": int(embeddings.shape[0]),
            "dim": int(embeddings.shape[1]),
            "pool": _pool_fingerprint(embeddings),
            "budget": self.budget,
            "strategy": strategy,
            "strategy_cfg": self.strategy_cfg,
            "seed": self.seed,
            "head": head.fingerprint() if head is not None else probs_key,
            "n_classes": head.n_classes
            if head is not None
            else (int(probs.shape[1]) if probs is not None else None),
            "labeled": hashlib.sha256(np.unique(self.labeled).tobytes()).hexdigest(),
            "excluded": hashlib.sha256(np.unique(self.excluded).tobytes()).hexdigest(),
            "batch": self.batch,
        }

    # ------------------------------------------------------------ state on disk

    def _open(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.dir / "run.json"
        if spec_path.exists():
            old = json.loads(spec_path.read_text())
            if old != self.spec:
                raise RunConflict(
                    f"{self.dir} holds a checkpoint of a different mining run; "
                    "use another directory (nothing was overwritten)",
                    field="workdir",
                )
        else:
            _atomic_write(spec_path, json.dumps(self.spec, indent=1, sort_keys=True))
        if self.head is None:
            return self.probs, None
        n, c = self.spec["n"], self.spec["n_classes"]
        probs_path, done_path = self.dir / "probs.f32", self.dir / "done.u8"
        mode = "r+" if probs_path.exists() and done_path.exists() else "w+"
        probs = np.memmap(probs_path, dtype=np.float32, mode=mode, shape=(n, c))
        done = np.memmap(done_path, dtype=np.uint8, mode=mode, shape=(self.n_batches,))
        return probs, done

    def status(self) -> dict:
        """``{"scored_batches", "n_batches", "finished"}`` read from disk."""
        done_path = self.dir / "done.u8"
        scored = 0
        if done_path.exists():
            scored = int(np.fromfile(done_path, dtype=np.uint8).sum())
        return {
            "scored_batches": scored,
            "n_batches": self.n_batches if self.head is not None else 0,
            "finished": (self.dir / "selection.json").exists(),
        }

    # ------------------------------------------------------------ running

    def run(self, on_batch: Callable[[int, int], None] | None = None) -> Selection:
        """Score what is left, select, write ``selection.json``; idempotent."""
        probs, done = self._open()
        sel_path = self.dir / "selection.json"
        if sel_path.exists():
            return Selection.from_json(json.loads(sel_path.read_text()))
        if self.head is not None:
            assert probs is not None and done is not None
            done_view = done.view(bool)
            batched_probs(
                self.x,
                self.head,
                batch=self.batch,
                out=probs,
                done=done_view,
                on_batch=on_batch,
                use_ray=self.use_ray,
            )
            if isinstance(done_view, np.memmap):
                done_view.flush()
        state = PoolState(
            embeddings=self.x,
            labeled=self.labeled,
            labels=self.labels,
            class_names=self.class_names,
            excluded=self.excluded,
            probs=probs
            if self.head is None
            else np.memmap(self.dir / "probs.f32", dtype=np.float32, mode="r", shape=probs.shape),
        )
        strat = make_strategy(self.strategy, **self.strategy_cfg)
        sel = strat(state, self.budget, np.random.default_rng(self.seed))
        _atomic_write(sel_path, json.dumps(sel.to_json()))
        return sel


# ---------------------------------------------------------------- hand-off


class Prelabel(BaseModel):
    label: str
    score: float = Field(ge=0.0, le=1.0)


class AnnotationBatch(BaseModel):
    """What a mining task puts into an annotation task: one entry per sample."""

    sample_ids: list[str]
    reasons: list[str]
    prelabels: list[Prelabel | None]


def dedupe_against(sample_ids: Sequence[str], queued_ids: Iterable[str]) -> np.ndarray:
    """Keep-mask over ``sample_ids``: False for ids already queued for annotation
    and for repeats within ``sample_ids`` (the first occurrence is kept)."""
    seen = set(queued_ids)
    keep = np.zeros(len(sample_ids), dtype=bool)
    for i, s in enumerate(sample_ids):
        if s not in seen:
            keep[i] = True
            seen.add(s)
    return keep


def queued_positions(sample_ids: Sequence[str], queued_ids: Iterable[str]) -> np.ndarray:
    """Pool positions of the queued ids: pass them as ``PoolState.excluded`` so
    the strategy fills its budget with samples that are not queued yet."""
    q = set(queued_ids)
    return np.asarray([i for i, s in enumerate(sample_ids) if s in q], dtype=np.int64)


def annotation_batch(
    selection: Selection,
    sample_ids: Sequence[str],
    queued_ids: Iterable[str] = (),
    probs: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> AnnotationBatch:
    """Map a selection to sample ids with reasons and model pre-labels,
    dropping anything already queued (never queued twice)."""
    if len(sample_ids) and selection.indices.size and selection.indices.max() >= len(sample_ids):
        raise MiningInputError("selection indexes past the end of sample_ids", field="sample_ids")
    ids = [str(sample_ids[i]) for i in selection.indices]
    keep = dedupe_against(ids, queued_ids)
    pre: list[Prelabel | None] = []
    for i in selection.indices[keep]:
        if probs is None:
            pre.append(None)
            continue
        p = np.asarray(probs[i], dtype=np.float64)
        k = int(p.argmax())
        name = class_names[k] if class_names is not None else str(k)
        pre.append(Prelabel(label=name, score=float(min(1.0, max(0.0, p[k])))))
    return AnnotationBatch(
        sample_ids=[s for s, k in zip(ids, keep, strict=True) if k],
        reasons=[r for r, k in zip(selection.reasons, keep, strict=True) if k],
        prelabels=pre,
    )
