"""Metrics on a frozen test split, the publish gate, and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    support: int


class Metrics(BaseModel):
    accuracy: float = Field(description="share of test samples classified right")
    balanced_accuracy: float = Field(description="mean per-class recall")
    ece: float = Field(description="expected calibration error, 10 equal-width bins")
    n: int
    classes: list[str]
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]] = Field(description="rows: true class, columns: predicted")


def evaluate(probs: np.ndarray, y_true: np.ndarray, classes: Sequence[str]) -> Metrics:
    """Metrics of predicted probabilities [N, C] against true class indices [N]."""
    classes = list(classes)
    c = len(classes)
    pred = probs.argmax(1)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y_true, pred), 1)
    per = {}
    for i, name in enumerate(classes):
        tp = conf[i, i]
        per[name] = ClassMetrics(
            precision=float(tp / conf[:, i].sum()) if conf[:, i].sum() else 0.0,
            recall=float(tp / conf[i].sum()) if conf[i].sum() else 0.0,
            support=int(conf[i].sum()),
        )
    present = [m.recall for m in per.values() if m.support]
    return Metrics(
        accuracy=float((pred == y_true).mean()) if len(y_true) else 0.0,
        balanced_accuracy=float(np.mean(present)) if present else 0.0,
        ece=expected_calibration_error(probs, y_true),
        n=int(len(y_true)),
        classes=classes,
        per_class=per,
        confusion=conf.tolist(),
    )


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    if len(y_true) == 0:
        return 0.0
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


class GateDecision(BaseModel):
    publish: bool
    reason: str
    candidate: float
    baseline: float | None


def gate(
    candidate: Metrics, baseline: Metrics | None, *, metric: str = "accuracy", min_gain: float = 0.0
) -> GateDecision:
    """Publish only a candidate strictly better than the published version on
    the same test split (or the first one)."""
    cand = float(getattr(candidate, metric))
    if baseline is None:
        return GateDecision(
            publish=True, reason="no published version yet", candidate=cand, baseline=None
        )
    if baseline.n != candidate.n:
        return GateDecision(
            publish=False,
            reason=f"test splits differ ({candidate.n} vs {baseline.n} samples): not comparable",
            candidate=cand,
            baseline=float(getattr(baseline, metric)),
        )
    base = float(getattr(baseline, metric))
    if cand > base + min_gain:
        return GateDecision(
            publish=True, reason=f"{metric} {cand:.4f} > {base:.4f}", candidate=cand, baseline=base
        )
    return GateDecision(
        publish=False,
        reason=f"{metric} {cand:.4f} is not better than published {base:.4f}",
        candidate=cand,
        baseline=base,
    )


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: Metrics, out: Path) -> Path:
    plt = _plt()
    conf = np.asarray(metrics.confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(metrics.classes),) * 2, dpi=100)
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(metrics.classes)), metrics.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(metrics.classes)), metrics.classes)
    for (i, j), v in np.ndenumerate(conf):
        ax.text(
            j, i, str(v), ha="center", va="center", color="black" if v < conf.max() / 2 else "white"
        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {metrics.accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_learning_curve(points: Sequence[dict[str, Any]], out: Path, *, x: str = "labels") -> Path:
    """``points``: [{"labels": n, "accuracy": a, "round": r}, ...]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    xs = [p[x] for p in points]
    ax.plot(xs, [p["accuracy"] for p in points], marker="o")
    ax.set_xlabel(x)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
