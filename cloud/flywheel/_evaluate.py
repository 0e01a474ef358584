"""Metrics on a frozen test split, the publish gate, and plots.

Classification: accuracy, per-class precision/recall, confusion, ECE.
Detection: average precision per class at IoU 0.5 (all-point interpolated, as
PASCAL VOC 2010+) and their mean, mAP@0.5, with the precision-recall curves.
"""

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


class ClassAP(BaseModel):
    ap: float | None = Field(description="AP@0.5; None when the class has no test box")
    gt: int = Field(description="test boxes of this class")
    detections: int = Field(description="predicted boxes of this class")
    recall: list[float] = Field(default_factory=list, description="PR curve, <= 101 points")
    precision: list[float] = Field(default_factory=list)


class DetectMetrics(BaseModel):
    map50: float = Field(description="mean AP@0.5 over classes with test boxes")
    n: int = Field(description="test images")
    boxes: int = Field(description="test boxes")
    iou: float = 0.5
    classes: list[str]
    per_class: dict[str, ClassAP]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def average_precision(tp: np.ndarray, n_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of detections sorted by descending score (``tp``: 1 for a true
    positive, 0 for a false one) against ``n_gt`` ground-truth boxes: the area
    under the precision envelope (all-point interpolation). Returns
    (ap, recall, precision) at each detection."""
    tp = np.asarray(tp, np.float64)
    if n_gt <= 0:
        raise ValueError("AP needs at least one ground-truth box")
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    if not len(tp):
        return 0.0, recall, precision
    r = np.concatenate([[0.0], recall])
    p = np.concatenate([precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: best precision at recall >= r
    ap = float(np.sum((r[1:] - r[:-1]) * p[:-1]))
    return ap, recall, precision


def evaluate_detections(
    preds: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    classes: Sequence[str],
    *,
    iou: float = 0.5,
) -> DetectMetrics:
    """mAP@``iou`` of per-image predictions [k, 6] (x1, y1, x2, y2, score,
    class) against per-image ground truth [m, 5] (x1, y1, x2, y2, class), in
    the same coordinates. A prediction is a true positive when it overlaps a
    not yet matched box of its class by >= ``iou`` (greedy, best score first)."""
    classes = list(classes)
    if len(preds) != len(truth):
        raise ValueError(f"{len(preds)} prediction sets for {len(truth)} images")
    preds = [np.asarray(p, np.float64).reshape(-1, 6) for p in preds]
    truth = [np.asarray(t, np.float64).reshape(-1, 5) for t in truth]
    per: dict[str, ClassAP] = {}
    aps = []
    for c, name in enumerate(classes):
        scored: list[tuple[float, int, int]] = []  # (score, image, row)
        gts = []
        for i, (p, t) in enumerate(zip(preds, truth, strict=True)):
            gts.append(t[t[:, 4].astype(int) == c, :4])
            for j in np.nonzero(p[:, 5].astype(int) == c)[0]:
                scored.append((float(p[j, 4]), i, int(j)))
        n_gt = sum(len(g) for g in gts)
        scored.sort(key=lambda s: -s[0])
        used = [np.zeros(len(g), bool) for g in gts]
        tp = np.zeros(len(scored))
        for k, (_, i, j) in enumerate(scored):
            if not len(gts[i]):
                continue
            ov = box_iou(preds[i][j, :4][None], gts[i])[0]
            ov[used[i]] = -1.0
            best = int(ov.argmax())
            if ov[best] >= iou:
                used[i][best] = True
                tp[k] = 1.0
        if n_gt == 0:
            per[name] = ClassAP(ap=None, gt=0, detections=len(scored))
            continue
        ap, rec, prec = average_precision(tp, n_gt)
        aps.append(ap)
        keep = np.unique(np.linspace(0, len(rec) - 1, min(len(rec), 101)).astype(int))
        per[name] = ClassAP(
            ap=ap,
            gt=n_gt,
            detections=len(scored),
            recall=[round(float(v), 4) for v in rec[keep]] if len(rec) else [],
            precision=[round(float(v), 4) for v in prec[keep]] if len(prec) else [],
        )
    return DetectMetrics(
        map50=float(np.mean(aps)) if aps else 0.0,
        n=len(truth),
        boxes=int(sum(len(t) for t in truth)),
        iou=iou,
        classes=classes,
        per_class=per,
    )


class GateDecision(BaseModel):
    publish: bool
    reason: str
    candidate: float
    baseline: float | None


def gate(
    candidate: Metrics | DetectMetrics,
    baseline: Metrics | DetectMetrics | None,
    *,
    metric: str = "accuracy",
    min_gain: float = 0.0,
) -> GateDecision:
    """Publish only a candidate strictly better than the published version on
    the same test split (or the first one). ``metric``: ``accuracy`` for
    classifiers, ``map50`` for detectors."""
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


def plot_pr_curves(metrics: DetectMetrics, out: Path) -> Path:
    """Precision-recall curve per class at IoU 0.5, AP in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8), dpi=100)
    for name, m in metrics.per_class.items():
        if m.ap is None:
            continue
        ax.plot(m.recall, m.precision, label=f"{name} AP {m.ap:.3f}", drawstyle="steps-post")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"mAP@{metrics.iou:g} {metrics.map50:.3f} ({metrics.boxes} boxes)")
    if any(m.ap is not None for m in metrics.per_class.values()):
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
