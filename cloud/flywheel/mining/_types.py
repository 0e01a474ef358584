"""Data types shared by the strategies, the scale helpers, runs and the harness."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud.errors import CitybrainError, Conflict, InvalidInput


class MiningError(CitybrainError):
    """Base of the mining errors."""


class MiningInputError(MiningError, InvalidInput):
    """Bad pool, budget, strategy name or parameter."""


class BudgetExceedsPool(MiningInputError):
    """More samples asked for than the pool has unlabeled, unqueued samples."""


class RunConflict(MiningError, Conflict):
    """A run directory holds a checkpoint of a different run."""


#: (embeddings batch [b, D]) -> class probabilities [b, C]
Head = Callable[[np.ndarray], np.ndarray]


@dataclass
class PoolState:
    """What a strategy sees.

    ``embeddings``: float32 ``[N, D]`` (an ``np.memmap`` works: strategies read it
    in batches and never copy the whole pool). ``probs``: optional model
    probabilities ``[N, C]`` (``None`` before a first model exists).
    ``penultimate``: optional inputs of the model's last linear layer ``[N, H]``
    for BADGE; the embeddings are used when absent (a linear head on frozen
    embeddings, the cold-start model). ``labeled``: indices with labels;
    ``labels``: their classes (optional, in the order given; both are stored
    sorted by index). ``excluded``: indices that must not be chosen (already
    queued for annotation). ``class_names``: optional names of the probability
    columns, for the reasons annotators read.
    """

    embeddings: np.ndarray
    labeled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    probs: np.ndarray | None = None
    penultimate: np.ndarray | None = None
    labels: np.ndarray | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_classes: int | None = None
    class_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, np.ndarray) or e.ndim != 2:
            raise MiningInputError("embeddings must be a 2-d array [N, D]", field="embeddings")
        if e.dtype != np.float32:
            raise MiningInputError(f"embeddings must be float32, got {e.dtype}", field="embeddings")
        n = e.shape[0]
        if n == 0:
            raise MiningInputError("the pool is empty: no embeddings", field="embeddings")
        if self.labels is not None:
            raw = np.asarray(self.labeled, dtype=np.int64).ravel()
            self.labels = np.asarray(self.labels)
            if self.labels.shape != raw.shape:
                raise MiningInputError("labels must match labeled one to one", field="labels")
            # ``labeled`` is kept sorted and unique: keep each label with its index
            self.labels = self.labels[np.unique(raw, return_index=True)[1]]
        self.labeled = _as_index(self.labeled, n, "labeled")
        self.excluded = _as_index(self.excluded, n, "excluded")
        for name in ("probs", "penultimate"):
            a = getattr(self, name)
            if a is not None and (a.ndim != 2 or a.shape[0] != n):
                raise MiningInputError(
                    f"{name} must have shape [{n}, *], got {a.shape}", field=name
                )
        if self.n_classes is None and self.probs is not None:
            self.n_classes = int(self.probs.shape[1])

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    def class_name(self, k: int) -> str:
        """Name of class column ``k`` (``"class k"`` without names)."""
        if self.class_names is not None and 0 <= k < len(self.class_names):
            return repr(str(self.class_names[k]))
        return f"class {k}"

    def covered(self) -> np.ndarray:
        """Indices already labeled or queued (sorted, unique)."""
        return np.union1d(self.labeled, self.excluded)

    def candidate_mask(self) -> np.ndarray:
        """Boolean ``[N]``: True where a sample may be selected."""
        m = np.ones(self.n, dtype=bool)
        m[self.labeled] = False
        m[self.excluded] = False
        return m


def _as_index(a: np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.unique(np.asarray(a, dtype=np.int64).ravel())
    if a.size and (a[0] < 0 or a[-1] >= n):
        raise MiningInputError(f"{name} holds indices outside [0, {n})", field=name)
    return a


@dataclass
class Selection:
    """Chosen pool indices, one reason (shown to annotators) and score each."""

    indices: np.ndarray
    reasons: list[str]
    scores: np.ndarray
    strategy: str

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if not (len(self.indices) == len(self.reasons) == len(self.scores)):
            raise ValueError("indices, reasons and scores must have the same length")

    def __len__(self) -> int:
        return len(self.indices)

    @staticmethod
    def concat(parts: list[Selection], strategy: str) -> Selection:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Selection(np.zeros(0, np.int64), [], np.zeros(0), strategy)
        return Selection(
            np.concatenate([p.indices for p in parts]),
            [r for p in parts for r in p.reasons],
            np.concatenate([p.scores for p in parts]),
            strategy,
        )

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "indices": [int(i) for i in self.indices],
            "reasons": list(self.reasons),
            "scores": [float(s) for s in self.scores],
        }

    @staticmethod
    def from_json(d: dict) -> Selection:
        return Selection(
            np.asarray(d["indices"], dtype=np.int64),
            list(d["reasons"]),
            np.asarray(d["scores"], dtype=np.float64),
            d["strategy"],
        )


#: ``select(state, budget, rng) -> Selection``
Strategy = Callable[[PoolState, int, np.random.Generator], Selection]
