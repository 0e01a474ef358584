"""Hard-sample selectors (pure functions from factories), rate limits, budget."""

from __future__ import annotations

import numpy as np

from edge_agent._config import RateLimits, SelectorSpec
from edge_agent._runtime import Result
from edge_agent._selectors import (
    Budget,
    Observation,
    RateLimiter,
    build_selector,
    disagreement,
    entropy,
    likely_miss,
    low_confidence,
    margin,
    near_threshold,
    novelty,
)
from edge_agent.protocol import Detection


def cls(
    probs: list[float], *, emb: list[float] | None = None, labels: tuple[str, ...] = ("a",)
) -> Result:
    dets = [Detection(label=lbl, score=max(probs)) for lbl in labels]
    return Result(
        dets, np.asarray(probs, np.float32), None if emb is None else np.asarray(emb, np.float32)
    )


def obs(r: Result, *, task: str = "classify", thr: float = 0.5, **kw: object) -> Observation:
    return Observation(result=r, threshold=thr, task=task, **kw)  # type: ignore[arg-type]


def test_low_confidence_band() -> None:
    sel = low_confidence(0.3, 0.6)
    assert sel(obs(cls([0.45, 0.35, 0.2]))) is not None
    assert sel(obs(cls([0.9, 0.05, 0.05]))) is None
    det = Result([], np.array([0.9, 0.4], np.float32))
    assert sel(obs(det, task="detect"))[0] == np.float32(0.4)  # type: ignore[index]


def test_near_threshold_margin_entropy() -> None:
    assert near_threshold(0.05)(obs(cls([0.52, 0.48]))) is not None
    assert near_threshold(0.05)(obs(cls([0.9, 0.1]))) is None
    assert margin(0.1)(obs(cls([0.46, 0.44, 0.1]))) is not None
    assert margin(0.1)(obs(cls([0.8, 0.1, 0.1]))) is None
    assert entropy(0.9)(obs(cls([0.34, 0.33, 0.33]))) is not None
    assert entropy(0.9)(obs(cls([0.98, 0.01, 0.01]))) is None
    assert entropy(0.9)(obs(Result([], np.array([0.5]), None), task="detect")) is not None


def test_novelty_and_likely_miss_use_embedding_summary() -> None:
    centroids = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    near = cls([0.9, 0.1], emb=[1, 0.01, 0])
    far = cls([0.9, 0.1], emb=[0, 0, 1])
    assert novelty(0.3)(obs(near, centroids=centroids)) is None
    assert novelty(0.3)(obs(far, centroids=centroids)) is not None
    assert novelty(0.3)(obs(far)) is None  # no summary shipped: never fires
    miss = Result([], np.array([0.1], np.float32), np.array([0, 0, 1], np.float32))
    assert likely_miss(0.3)(obs(miss, task="detect", centroids=centroids)) is not None
    assert likely_miss(0.3)(obs(far, centroids=centroids)) is None  # it did detect something


def test_disagreement_during_canary() -> None:
    new = cls([0.9], labels=("car",))
    assert disagreement()(obs(new, shadow=cls([0.9], labels=("bus",)))) is not None
    assert disagreement()(obs(new, shadow=cls([0.8], labels=("car",)))) is None
    assert disagreement()(obs(new)) is None


def test_factories_from_config() -> None:
    sel = build_selector(SelectorSpec(kind="low_confidence", params={"low": 0.0, "high": 0.2}))
    assert sel(obs(cls([0.1, 0.05]))) is not None


def test_rate_limiter_windows() -> None:
    now = [0.0]
    rl = RateLimiter(RateLimits(per_minute=2, per_hour=3), clock=lambda: now[0])
    assert [rl.allow() for _ in range(3)] == [True, True, False]
    now[0] = 61
    assert rl.allow() is True  # new minute, third of the hour
    assert rl.allow() is False  # hour full
    now[0] = 3700
    assert rl.allow() is True
    day = RateLimiter(RateLimits(per_day=1), clock=lambda: now[0])
    assert day.allow() and not day.allow()
    now[0] += 86401
    assert day.allow()


def test_bandwidth_budget() -> None:
    now = [0.0]
    b = Budget(1000, clock=lambda: now[0])
    assert b.spend(600) and not b.spend(500) and b.spend(400)
    now[0] = 3601
    assert b.spend(900)
