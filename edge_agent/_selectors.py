"""Hard-sample selectors: pure functions made by small factories, plus the
declarative per-selector rate limits and the shared bandwidth budget.

A selector takes a :class:`Observation` and returns ``(score, reason)`` when
the frame is worth sending, else ``None``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent._config import RateLimits, SelectorSpec
from edge_agent._runtime import Result


@dataclass
class Observation:
    result: Result
    threshold: float
    task: str  # classify | detect
    centroids: np.ndarray | None = None  # embedding_summary rows
    shadow: Result | None = None  # the previous model's result during a canary


Pick = tuple[float, str] | None
Selector = Callable[[Observation], Pick]


def _top(obs: Observation) -> float:
    s = obs.result.scores
    return float(s.max()) if s.size else 0.0


def low_confidence(low: float = 0.3, high: float = 0.6) -> Selector:
    def select(obs: Observation) -> Pick:
        s = obs.result.scores
        band = s[(s >= low) & (s < high)] if s.size else s
        if obs.task == "classify":
            top = _top(obs)
            return (top, f"top score {top:.2f} in [{low}, {high})") if low <= top < high else None
        if band.size:
            return (float(band.max()), f"{band.size} boxes scored in [{low}, {high})")
        return None

    return select


def near_threshold(delta: float = 0.05) -> Selector:
    def select(obs: Observation) -> Pick:
        s = obs.result.scores
        if not s.size:
            return None
        cand = s if obs.task == "detect" else s[[int(np.argmax(s))]]
        gap = np.abs(cand - obs.threshold)
        i = int(np.argmin(gap))
        if gap[i] < delta:
            return (
                float(cand[i]),
                f"score {cand[i]:.2f} within {delta} of threshold {obs.threshold}",
            )
        return None

    return select


def margin(max_margin: float = 0.1) -> Selector:
    def select(obs: Observation) -> Pick:
        s = obs.result.scores
        if obs.task != "classify" or s.size < 2:
            return None
        a, b = np.sort(s)[-2:][::-1]
        m = float(a - b)
        return (m, f"top-2 margin {m:.2f} < {max_margin}") if m < max_margin else None

    return select


def entropy(min_entropy: float = 0.8) -> Selector:
    """Normalised entropy (0..1) of the class distribution; for boxes, the
    highest binary entropy among candidate scores."""

    def select(obs: Observation) -> Pick:
        s = np.clip(obs.result.scores.astype(np.float64), 1e-12, 1)
        if not s.size:
            return None
        if obs.task == "classify":
            if s.size < 2:
                return None
            p = s / s.sum()
            h = float(-(p * np.log(p)).sum() / math.log(p.size))
        else:
            q = np.clip(s, 1e-12, 1 - 1e-12)
            h = float((-(q * np.log2(q)) - (1 - q) * np.log2(1 - q)).max())
        return (h, f"entropy {h:.2f} >= {min_entropy}") if h >= min_entropy else None

    return select


def novelty_distance(obs: Observation) -> float | None:
    """Cosine distance of the frame embedding to the nearest training centroid."""
    e, c = obs.result.embedding, obs.centroids
    if e is None or c is None or c.size == 0 or e.size != c.shape[-1]:
        return None
    e = e / (np.linalg.norm(e) + 1e-12)
    cn = c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-12)
    return float(1.0 - (cn @ e).max())


def novelty(min_distance: float = 0.3) -> Selector:
    def select(obs: Observation) -> Pick:
        d = novelty_distance(obs)
        if d is None or d < min_distance:
            return None
        return (d, f"embedding {d:.2f} from the nearest training centroid")

    return select


def disagreement() -> Selector:
    def labels(r: Result) -> list[str]:
        return sorted(d.label for d in r.detections)

    def select(obs: Observation) -> Pick:
        if obs.shadow is None:
            return None
        new, old = labels(obs.result), labels(obs.shadow)
        if new == old:
            return None
        return (1.0, f"new model says {new[:5]}, old model says {old[:5]}")

    return select


def likely_miss(min_distance: float = 0.3) -> Selector:
    def select(obs: Observation) -> Pick:
        if obs.result.detections:
            return None
        d = novelty_distance(obs)
        if d is None or d < min_distance:
            return None
        return (d, f"no detections on a novel frame (distance {d:.2f})")

    return select


FACTORIES: dict[str, Callable[..., Selector]] = {
    "low_confidence": low_confidence,
    "near_threshold": near_threshold,
    "margin": margin,
    "entropy": entropy,
    "novelty": novelty,
    "disagreement": disagreement,
    "likely_miss": likely_miss,
}


def build_selector(spec: SelectorSpec) -> Selector:
    return FACTORIES[spec.kind](**spec.params)


class RateLimiter:
    """Sliding-window limits per minute / hour / day."""

    WINDOWS = (("per_minute", 60.0), ("per_hour", 3600.0), ("per_day", 86400.0))

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._hits: deque[float] = deque()

    def allow(self) -> bool:
        """True (and counted) when one more sample fits every window."""
        now = self.clock()
        while self._hits and now - self._hits[0] > 86400.0:
            self._hits.popleft()
        for name, span in self.WINDOWS:
            cap = getattr(self.limits, name)
            if cap is not None and sum(1 for t in self._hits if now - t <= span) >= cap:
                return False
        self._hits.append(now)
        return True


class Budget:
    """At most ``bytes_per_hour`` bytes in any sliding hour. With ``oversize``,
    one item larger than the whole budget passes when the hour is otherwise empty
    (for a cap that may delay but must never block for ever)."""

    def __init__(
        self,
        bytes_per_hour: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        oversize: bool = False,
    ) -> None:
        self.cap = bytes_per_hour
        self.clock = clock
        self.oversize = oversize
        self._spent: deque[tuple[float, int]] = deque()

    def used(self) -> int:
        """Bytes spent in the last hour."""
        now = self.clock()
        while self._spent and now - self._spent[0][0] > 3600.0:
            self._spent.popleft()
        return sum(b for _, b in self._spent)

    def spend(self, n: int) -> bool:
        used = self.used()
        if used + n > self.cap and not (self.oversize and used == 0):
            return False
        self._spent.append((self.clock(), n))
        return True
