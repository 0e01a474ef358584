"""Detection from box annotations: a single-level FCOS-style detector on the
dataset's backbone, small enough to train on CPU.

The backbone's feature map (stride 8 for the citybrain encoder) feeds a shared
conv tower with three heads: per-class logits, box distances (left, top,
right, bottom, log-scaled, in strides) and centerness. Training uses FCOS
targets with center sampling, sigmoid focal loss (foreground/background
imbalance) with inverse-frequency class weights on positives (class
imbalance), GIoU box loss and centerness BCE. Everything is seeded.

The trained module (and its ONNX export) maps the normalised NCHW input to the
wire contract's ``boxes`` output [N, K, 6]: one row per feature-map location
and class (x1, y1, x2, y2 normalised to [0, 1], score, class index), with
score = sqrt(sigmoid(class) * sigmoid(centerness)). There is no NMS in the
graph: the edge agent (and :func:`decode_rows` here) thresholds and runs
per-class NMS. One row per class keeps the output continuous, so golden and
parity checks compare numbers, not argmax decisions.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud.errors import InvalidInput
from cloud.flywheel._backbones import MEAN, STD, normalize
from cloud.flywheel._export import export_module

Progress = Callable[[float, str], None]

#: max |ORT - torch| on the boxes output for the export to be accepted
PARITY_ATOL = 1e-3


class DetectConfig(BaseModel):
    """Knobs of a detection training run; every one has a sensible default."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "frozen", "finetune", "scratch"] = Field(
        default="auto",
        description="auto: finetune the dataset's pretrained backbone, scratch when it has "
        "none; frozen trains only the head on the backbone's fixed feature map",
    )
    seed: int = Field(default=0, description="seeds torch and numpy")
    input_size: int = Field(default=128, ge=32, le=640, description="square input side, px")
    epochs: int | None = Field(
        default=None, gt=0, description="None: chosen from the number of images (recorded)"
    )
    image_passes: int = Field(
        default=4000, gt=0, description="auto epochs aim at about this many image passes"
    )
    lr: float = Field(default=3e-3, gt=0, description="AdamW learning rate of the head")
    backbone_lr_factor: float = Field(
        default=1.0, gt=0, le=1, description="backbone lr = lr * this when fine-tuning"
    )
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=16, gt=0)
    head_channels: int = Field(default=64, gt=0)
    center_radius: float = Field(
        default=1.5, gt=0, description="FCOS center sampling radius, in strides"
    )
    balance: bool = Field(default=True, description="inverse-frequency class weights")
    score_threshold: float = Field(
        default=0.3, ge=0, le=1, description="the agent's score threshold (manifest)"
    )
    nms_iou: float = Field(default=0.5, ge=0, le=1, description="the agent's NMS IoU (manifest)")


# ---------------------------------------------------------------------------
# Box validation (before any compute)
# ---------------------------------------------------------------------------


def check_boxes(
    items: Sequence[tuple[str, Sequence[dict[str, Any]], int, int]],
    classes: Sequence[str],
    *,
    require: bool = True,
) -> list[np.ndarray]:
    """Validate the box annotations of images; return per image float32
    [k, 5] boxes (x1, y1, x2, y2 normalised to [0, 1], class index). An image
    annotated with no box is a valid negative; 0 boxes in all is refused
    when ``require``.

    ``items``: (sample id, boxes in pixels, image width, image height); a
    width or height of 0 means unknown (the outside-image check is skipped).
    """
    index = {c: i for i, c in enumerate(classes)}
    unknown: Counter[str] = Counter()
    out: list[np.ndarray] = []
    total = 0
    for sid, boxes, w, h in items:
        rows = []
        for b in boxes:
            label = str(b.get("label", ""))
            if label not in index:
                unknown[label] += 1
                continue
            try:
                x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
            except (KeyError, TypeError, ValueError):
                raise InvalidInput(
                    f"sample {sid[:12]}: box {b} lacks numeric x1, y1, x2, y2", field="boxes"
                ) from None
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
                raise InvalidInput(
                    f"sample {sid[:12]}: degenerate box {b} (zero area): fix or delete it",
                    field="boxes",
                )
            if x1 < 0 or y1 < 0 or (w and h and (x1 >= w or y1 >= h or x2 > w + 1 or y2 > h + 1)):
                raise InvalidInput(
                    f"sample {sid[:12]}: box {b} lies outside the {w}x{h} image", field="boxes"
                )
            rows.append([x1, y1, x2, y2, index[label]])
        total += len(rows)
        arr = np.asarray(rows, np.float32).reshape(-1, 5)
        if w and h:
            arr[:, [0, 2]] = np.clip(arr[:, [0, 2]] / w, 0, 1)
            arr[:, [1, 3]] = np.clip(arr[:, [1, 3]] / h, 0, 1)
        out.append(arr)
    if unknown:
        raise InvalidInput(
            f"boxes name unknown classes {sorted(unknown)[:5]} "
            f"({sum(unknown.values())} boxes); known: {list(classes)}",
            field="boxes",
        )
    if total == 0 and require:
        raise InvalidInput(
            "cannot train a detector with 0 box labels: draw some boxes first", field="boxes"
        )
    return out


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


def feature_extractor(backbone: Any) -> Any:
    """The convolutional part of a torch backbone (before global pooling), or
    a clear error when the backbone has none we can take."""
    import torch
    from torch import nn

    module = getattr(backbone, "module", None)
    name = getattr(backbone, "name", "?")
    if (
        isinstance(module, nn.Sequential)
        and len(module) > 2
        and isinstance(module[-2], nn.AdaptiveAvgPool2d)
        and isinstance(module[-1], nn.Flatten)
    ):
        return copy.deepcopy(nn.Sequential(*list(module)[:-2]))
    del torch
    raise InvalidInput(
        f"detection needs a convolutional backbone whose feature map can be taken before "
        f"global pooling (a citybrain pretraining checkpoint or the from-scratch encoder); "
        f"{name} is not one",
        field="backbone",
    )


def _head(in_ch: int, n_classes: int, ch: int) -> Any:
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            groups = 8 if ch % 8 == 0 else 1
            self.tower = nn.Sequential(
                nn.Conv2d(in_ch, ch, 3, padding=1),
                nn.GroupNorm(groups, ch),
                nn.ReLU(inplace=True),
                nn.Conv2d(ch, ch, 3, padding=1),
                nn.GroupNorm(groups, ch),
                nn.ReLU(inplace=True),
            )
            self.cls = nn.Conv2d(ch, n_classes, 3, padding=1)
            self.reg = nn.Conv2d(ch, 4, 3, padding=1)
            self.ctr = nn.Conv2d(ch, 1, 3, padding=1)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)
            nn.init.constant_(self.cls.bias, -math.log(99.0))  # prior 0.01 foreground

        def forward(self, f: Any) -> tuple[Any, Any, Any]:
            t = self.tower(f)
            return self.cls(t), self.reg(t), self.ctr(t)

    return Head()


def _detector(features: Any, head: Any, input_size: int, stride: int, n_classes: int) -> Any:
    import torch
    from torch import nn

    class Detector(nn.Module):
        """features + head; ``forward`` gives the wire contract's rows."""

        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.head = head
            self.input_size = input_size
            self.stride = stride
            self.n_classes = n_classes
            g = input_size // stride
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            centers = torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(stride)
            self.register_buffer("centers", centers, persistent=False)  # [L, 2] px
            self.register_buffer(
                "class_ids", torch.arange(n_classes).float().view(1, 1, n_classes, 1)
            )

        def raw(self, x: Any) -> tuple[Any, Any, Any]:
            """[N, L, C] class logits, [N, L, 4] boxes (px), [N, L] centerness logits."""
            return self.decode(*self.head(self.features(x)))

        def decode(self, cls: Any, reg: Any, ctr: Any) -> tuple[Any, Any, Any]:
            n = cls.shape[0]
            cls = cls.flatten(2).transpose(1, 2)
            dist = torch.exp(reg.flatten(2).transpose(1, 2).clamp(max=6.0)) * self.stride
            c = self.centers.unsqueeze(0)
            boxes = torch.cat([c - dist[..., :2], c + dist[..., 2:]], -1)
            return cls, boxes, ctr.reshape(n, -1)

        def forward(self, x: Any) -> Any:
            cls, boxes, ctr = self.raw(x)
            n, length, k = cls.shape
            score = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr).unsqueeze(-1))
            b = (boxes / self.input_size).clamp(0.0, 1.0)
            rows = torch.cat(
                [
                    b.unsqueeze(2).expand(n, length, k, 4),
                    score.unsqueeze(-1),
                    self.class_ids.expand(n, length, k, 1),
                ],
                -1,
            )
            return rows.reshape(n, length * k, 6)

    return Detector()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def fcos_targets(
    centers: Any, gt: Any, stride: int, radius: float, n_classes: int
) -> tuple[Any, Any, Any]:
    """FCOS targets of one image: class one-hot [L, C], box [L, 4] (px) and a
    positive mask [L]. ``gt``: [M, 5] (x1, y1, x2, y2 px, class). A location is
    positive for the smallest box that contains it within ``radius`` strides
    of the box center; a box too small to hold a location gets the nearest."""
    import torch

    length = centers.shape[0]
    onehot = torch.zeros(length, n_classes)
    if gt.shape[0] == 0:
        return onehot, torch.zeros(length, 4), torch.zeros(length, dtype=torch.bool)
    x, y = centers[:, 0:1], centers[:, 1:2]
    x1, y1, x2, y2 = gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3]
    inside = torch.stack([x - x1, y - y1, x2 - x, y2 - y], -1).min(-1).values > 0
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = radius * stride
    near = ((x - cx).abs() <= r) & ((y - cy).abs() <= r)
    area = ((x2 - x1) * (y2 - y1)).unsqueeze(0).expand(length, -1).clone()
    area[~(inside & near)] = float("inf")
    best_area, assigned = area.min(1)
    pos = torch.isfinite(best_area)
    for m in range(gt.shape[0]):  # boxes that got no location: the nearest one
        if not (pos & (assigned == m)).any():
            j = int(((x[:, 0] - cx[m]) ** 2 + (y[:, 0] - cy[m]) ** 2).argmin())
            if not pos[j]:
                pos[j], assigned[j] = True, m
    onehot[pos, gt[assigned[pos], 4].long()] = 1.0
    return onehot, gt[assigned, :4], pos


def _centerness(centers: Any, boxes: Any) -> Any:
    import torch

    x, y = centers[:, 0], centers[:, 1]
    lr = torch.stack([x - boxes[:, 0], boxes[:, 2] - x], -1).clamp(min=1e-3)
    tb = torch.stack([y - boxes[:, 1], boxes[:, 3] - y], -1).clamp(min=1e-3)
    c = (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    return torch.sqrt(c)


def class_weights(truth: Sequence[np.ndarray], n_classes: int, balance: bool) -> np.ndarray:
    """Inverse box frequency per class, mean 1 over present classes, capped at 10."""
    counts = np.zeros(n_classes, np.float64)
    for t in truth:
        counts += np.bincount(t[:, 4].astype(int), minlength=n_classes)[:n_classes]
    if not balance or counts.sum() == 0:
        return np.ones(n_classes, np.float32)
    present = counts > 0
    w = np.where(present, counts.sum() / (np.maximum(counts, 1) * present.sum()), 1.0)
    return np.clip(w, 0.1, 10.0).astype(np.float32)


def choose_mode(cfg: DetectConfig, pretrained: bool) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "finetune" if pretrained else "scratch"


def auto_epochs(cfg: DetectConfig, n_images: int) -> int:
    if cfg.epochs is not None:
        return cfg.epochs
    return int(np.clip(round(cfg.image_passes / max(n_images, 1)), 12, 150))


@dataclass
class TrainedDetector:
    """``module`` maps normalised NCHW input [N, 3, S, S] to rows [N, K, 6]."""

    module: Any
    classes: list[str]
    mode: str
    input_size: int
    stride: int
    config: dict[str, Any]
    backbone_name: str
    history: list[dict[str, float]] = field(default_factory=list)

    def rows(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Raw output rows [N, K, 6] of uint8 RGB images [N, S, S, 3]."""
        import torch

        self.module.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                out.append(self.module(torch.from_numpy(normalize(images[i : i + batch_size]))))
        if not out:
            return np.zeros((0, 0, 6), np.float32)
        return torch.cat(out).numpy()

    def predict(
        self, images: np.ndarray, *, score_threshold: float = 0.05, nms_iou: float = 0.5
    ) -> list[np.ndarray]:
        """Per image [k, 6] detections after threshold + per-class NMS."""
        return decode_rows(self.rows(images), score_threshold=score_threshold, nms_iou=nms_iou)


def decode_rows(
    rows: np.ndarray, *, score_threshold: float = 0.05, nms_iou: float = 0.5, top_k: int = 100
) -> list[np.ndarray]:
    """What the edge agent does with a ``boxes`` output: per image, rows with
    score >= threshold, per-class NMS, the ``top_k`` best."""
    from cloud.flywheel._evaluate import box_iou

    out = []
    for r in np.asarray(rows, np.float32):
        r = r[r[:, 4] >= score_threshold]
        keep: list[int] = []
        for c in np.unique(r[:, 5]):
            idx = np.nonzero(r[:, 5] == c)[0]
            idx = idx[np.argsort(-r[idx, 4], kind="stable")]
            while len(idx):
                keep.append(int(idx[0]))
                idx = idx[1:][box_iou(r[idx[0], :4], r[idx[1:], :4])[0] <= nms_iou]
        keep.sort(key=lambda i: -r[i, 4])
        out.append(r[keep[:top_k]].reshape(-1, 6))
    return out


def focal_loss(logits: Any, targets: Any, alpha: float = 0.25, gamma: float = 2.0) -> Any:
    """Sigmoid focal loss per element (Lin et al. 2017)."""
    import torch

    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return a_t * ce * (1 - p_t) ** gamma


def giou_loss(a: Any, b: Any) -> Any:
    """1 - generalised IoU of paired x1, y1, x2, y2 boxes [K, 4]."""
    import torch

    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return 1 - iou + (hull - union) / hull.clamp(min=1e-7)


def train_detector(
    images: np.ndarray,
    truth: Sequence[np.ndarray],
    classes: Sequence[str],
    backbone: Any,
    cfg: DetectConfig | None = None,
    *,
    pretrained: bool = True,
    progress: Progress | None = None,
) -> TrainedDetector:
    """Train on uint8 RGB images [N, S, S, 3] (S = ``cfg.input_size``) with
    per-image boxes [k, 5] (x1, y1, x2, y2 normalised, class index).

    ``backbone``: a torch backbone whose feature map is taken (see
    :func:`feature_extractor`); with ``pretrained=False`` it is the seeded
    from-scratch encoder and is trained with the full learning rate."""
    import torch

    cfg = cfg or DetectConfig()
    classes = list(classes)
    n_cls = len(classes)
    if len(images) != len(truth):
        raise InvalidInput(f"{len(images)} images but {len(truth)} box sets")
    if sum(len(t) for t in truth) == 0:
        raise InvalidInput("cannot train a detector with 0 box labels", field="boxes")
    size = cfg.input_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise InvalidInput(f"images must be [N, {size}, {size}, 3], got {list(images.shape)}")
    for t in truth:
        if len(t) and (t[:, 4].min() < 0 or t[:, 4].max() >= n_cls):
            raise InvalidInput("a box class index is outside the class list", field="boxes")
    features = feature_extractor(backbone)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    mode = choose_mode(cfg, pretrained)
    if mode == "scratch" and pretrained:  # a fresh encoder of the same shape
        for m in features.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    with torch.no_grad():
        fmap = features.eval()(torch.zeros(1, 3, size, size))
    if fmap.ndim != 4 or fmap.shape[2] != fmap.shape[3] or size % fmap.shape[2]:
        raise InvalidInput(
            f"backbone feature map {list(fmap.shape)} does not tile a {size}px input",
            field="backbone",
        )
    stride = size // int(fmap.shape[2])
    head = _head(int(fmap.shape[1]), n_cls, cfg.head_channels)
    det = _detector(features, head, size, stride, n_cls)
    epochs = auto_epochs(cfg, len(images))
    resolved = cfg.model_dump() | {"epochs": epochs, "mode": mode, "stride": stride}

    w_cls = torch.from_numpy(class_weights(truth, n_cls, cfg.balance))
    gt_px = [torch.from_numpy(np.asarray(t, np.float32).reshape(-1, 5)).clone() for t in truth]
    for g in gt_px:
        g[:, :4] *= size
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    freeze = mode == "frozen"
    if freeze:
        features.requires_grad_(False)
        groups = [{"params": head.parameters(), "lr": cfg.lr}]
    elif mode == "finetune":
        groups = [
            {"params": head.parameters(), "lr": cfg.lr},
            {"params": features.parameters(), "lr": cfg.lr * cfg.backbone_lr_factor},
        ]
    else:
        groups = [{"params": det.parameters(), "lr": cfg.lr}]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, len(images))
    steps_per_epoch = math.ceil(len(images) / bs)
    total_steps = epochs * steps_per_epoch
    warm = min(50, total_steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / total_steps)),
    )
    cached = None
    if freeze:  # the backbone never changes: its maps of each image and its mirror, once
        with torch.no_grad():
            xs = x_all.float().div(255).sub(mean).div(std)
            cached = (features(xs), features(xs.flip(-1)))
    gen = np.random.default_rng(cfg.seed)
    centers = det.centers
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        det.train()  # fine-tuning adapts BatchNorm too: the detector's input is not the
        # pretraining's (size, no augmentation), and frozen statistics trained worse here
        perm = gen.permutation(len(images))
        sums = {"loss": 0.0, "cls": 0.0, "box": 0.0, "ctr": 0.0}
        for s in range(0, len(images), bs):
            idx = perm[s : s + bs]
            flip = gen.random(len(idx)) < 0.5
            targets = []
            for k, i in enumerate(idx):
                g = gt_px[i]
                if flip[k]:
                    g = g.clone()
                    g[:, [0, 2]] = size - gt_px[i][:, [2, 0]]
                targets.append(fcos_targets(centers, g, stride, cfg.center_radius, n_cls))
            if cached is not None:
                f = torch.stack(
                    [cached[1][i] if fl else cached[0][i] for i, fl in zip(idx, flip, strict=True)]
                )
                cls, boxes, ctr = det.decode(*det.head(f))
            else:
                xb = x_all[torch.from_numpy(idx)].float().div(255)
                fl = torch.from_numpy(flip)
                xb[fl] = xb[fl].flip(-1)
                gain = torch.from_numpy(gen.uniform(0.75, 1.25, (len(idx), 1, 1, 1))).float()
                xb = (xb * gain).clamp(0, 1).sub(mean).div(std)
                cls, boxes, ctr = det.raw(xb)
            t_cls = torch.stack([t[0] for t in targets])
            t_box = torch.stack([t[1] for t in targets])
            pos = torch.stack([t[2] for t in targets])
            n_pos = max(1.0, float(pos.sum()))
            focal = focal_loss(cls, t_cls)
            focal = torch.where(t_cls > 0, focal * w_cls, focal)
            l_cls = focal.sum() / n_pos
            if pos.any():
                c_t = _centerness(centers.expand(len(idx), -1, -1)[pos], t_box[pos])
                giou = giou_loss(boxes[pos], t_box[pos])
                l_box = (giou * c_t).sum() / c_t.sum().clamp(min=1e-6)
                l_ctr = torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], c_t)
            else:
                l_box = l_ctr = cls.sum() * 0.0
            loss = l_cls + l_box + l_ctr
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for key, v in (("loss", loss), ("cls", l_cls), ("box", l_box), ("ctr", l_ctr)):
                sums[key] += float(v.detach())
        history.append({"epoch": epoch + 1} | {k: v / steps_per_epoch for k, v in sums.items()})
        if progress:
            progress(
                (epoch + 1) / epochs,
                f"epoch {epoch + 1}/{epochs} loss {history[-1]['loss']:.3f}",
            )
    det.eval()
    features.requires_grad_(True)
    name = "scratch" if mode == "scratch" and pretrained else getattr(backbone, "name", "?")
    return TrainedDetector(det, classes, mode, size, stride, resolved, name, history)


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


class DetectParityReport(BaseModel):
    samples: int
    max_abs_diff: float
    atol: float
    ok: bool


def postprocess_contract(cfg: DetectConfig | dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``postprocess`` for an exported detector."""
    c = (
        cfg
        if isinstance(cfg, DetectConfig)
        else DetectConfig.model_validate(
            {k: v for k, v in cfg.items() if k in DetectConfig.model_fields}
        )
    )
    return {"output": "boxes", "score_threshold": c.score_threshold, "nms_iou": c.nms_iou}


def export_detector_onnx(model: TrainedDetector, out: Path, *, opset: int = 17) -> Path:
    """ONNX: ``input`` float32 [N, 3, S, S] -> ``boxes`` [N, K, 6]."""
    return export_module(model.module, model.input_size, out, output="boxes", opset=opset)


def detector_parity_check(
    model: TrainedDetector, onnx_path: Path, images: np.ndarray, *, atol: float = PARITY_ATOL
) -> DetectParityReport:
    """Compare ONNX Runtime and PyTorch ``boxes`` rows on real samples."""
    import onnxruntime as ort

    if len(images) == 0:
        raise InvalidInput("parity check needs at least one real sample")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": normalize(images)})[0]
    want = model.rows(images)
    if got.shape != want.shape:
        diff = float("inf")
    else:
        diff = float(np.abs(got - want).max())
    return DetectParityReport(samples=len(images), max_abs_diff=diff, atol=atol, ok=diff <= atol)


def onnx_rows(onnx_path: Path, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``boxes`` rows of an exported detector run with ONNX Runtime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = [
        sess.run(None, {name: normalize(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0, 6), np.float32)
