"""Training a classifier from few labels.

The choice is automatic and recorded: with few labels a linear head is
trained on frozen embeddings (cheap, hard to overfit); once there are at least
``finetune_min_labels`` labels (and ``finetune_min_per_class`` per class) the
backbone is fine-tuned together with the head. Class imbalance is handled by
inverse-frequency class weights. Everything is seeded; the full config is
returned so a rerun reproduces the model.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud.errors import InvalidInput
from cloud.flywheel._backbones import MEAN, STD, TorchBackbone, conv_encoder, normalize

Progress = Callable[[float, str], None]


class TrainConfig(BaseModel):
    """Knobs of a training run; every one has a sensible default."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "head", "finetune", "scratch"] = Field(
        default="auto",
        description="auto picks head (frozen embeddings) or finetune by label count; "
        "scratch trains a fresh encoder end to end (the baseline)",
    )
    seed: int = Field(default=0, description="seeds torch and numpy")
    head_epochs: int = Field(default=300, gt=0, description="full-batch steps for the head")
    head_lr: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=1e-3, ge=0, description="L2 on the head")
    finetune_epochs: int = Field(default=15, gt=0)
    finetune_lr: float = Field(default=1e-3, gt=0)
    finetune_min_labels: int = Field(default=500, gt=0, description="labels needed to finetune")
    finetune_min_per_class: int = Field(default=20, gt=0)
    batch_size: int = Field(default=64, gt=0)
    balance: bool = Field(default=True, description="inverse-frequency class weights")


def check_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Validate labels before any compute; return class indices."""
    if len(labels) == 0:
        raise InvalidInput("cannot train with 0 labels: label some samples first", field="labels")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise InvalidInput(
            f"labels name unknown classes {unknown[:5]}; known: {list(classes)}", field="labels"
        )
    present = set(labels)
    if len(present) < 2:
        raise InvalidInput(
            f"cannot train a classifier on one class only ({next(iter(present))!r}): "
            "label at least one sample of another class",
            field="labels",
        )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[x] for x in labels], dtype=np.int64)


def _class_weights(y: np.ndarray, n_classes: int, balance: bool):  # type: ignore[no-untyped-def]
    import torch

    if not balance:
        return None
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    w = np.where(counts > 0, len(y) / (np.maximum(counts, 1) * (counts > 0).sum()), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class Standardize:
    """Per-dimension standardisation of embeddings, folded into the head."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        self.std = x.std(0) + 1e-6


def train_head(
    emb: np.ndarray, y: np.ndarray, n_classes: int, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised embeddings.

    Returns (W [C, D], b [C]) acting on RAW embeddings (standardisation folded in).
    """
    import torch

    torch.manual_seed(cfg.seed)
    st = Standardize(emb)
    x = torch.from_numpy(((emb - st.mean) / st.std).astype(np.float32))
    t = torch.from_numpy(y)
    lin = torch.nn.Linear(emb.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=cfg.head_epochs, history_size=20)
    weights = _class_weights(y, n_classes, cfg.balance)

    def closure():  # type: ignore[no-untyped-def]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), t, weight=weights)
        loss = loss + cfg.weight_decay * (lin.weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = lin.weight.detach().numpy() / st.std[None, :]
    b = lin.bias.detach().numpy() - (w * st.mean[None, :]).sum(1)
    return w.astype(np.float32), b.astype(np.float32)


@dataclass
class TrainedClassifier:
    """backbone + linear head; ``module`` maps normalised NCHW input to logits."""

    module: Any
    classes: list[str]
    mode: str
    input_size: int
    config: dict[str, Any]
    backbone_name: str
    history: list[dict[str, float]] = field(default_factory=list)

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch

        self.module.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                logits = self.module(torch.from_numpy(normalize(images[i : i + batch_size])))
                out.append(torch.softmax(logits, 1).numpy())
        if not out:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(out)


def _head_module(backbone: TorchBackbone, w: np.ndarray, b: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    return torch.nn.Sequential(copy.deepcopy(backbone.module), lin).eval()


def choose_mode(y: np.ndarray, cfg: TrainConfig) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    per_class = min(Counter(y.tolist()).values())
    if len(y) >= cfg.finetune_min_labels and per_class >= cfg.finetune_min_per_class:
        return "finetune"
    return "head"


def _train_end_to_end(
    module: Any,
    images: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: TrainConfig,
    epochs: int,
    lr: float,
    progress: Progress | None,
) -> list[dict[str, float]]:
    import torch
    from torchvision.transforms import v2

    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    aug = v2.Compose(
        [
            v2.RandomResizedCrop(images.shape[1], scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    t_all = torch.from_numpy(y)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    weights = _class_weights(y, n_classes, cfg.balance)
    bs = min(cfg.batch_size, len(y))
    history = []
    for epoch in range(epochs):
        module.train()
        perm = gen.permutation(len(y))
        total, steps = 0.0, 0
        for s in range(0, len(y), bs):
            idx = torch.from_numpy(perm[s : s + bs])
            if len(idx) < 2:
                continue
            xb = torch.stack([aug(img) for img in x_all[idx]]).float().div(255).sub(mean).div(std)
            loss = torch.nn.functional.cross_entropy(module(xb), t_all[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        sched.step()
        history.append({"epoch": epoch + 1, "loss": total / max(steps, 1)})
        if progress:
            progress(
                (epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs} loss {history[-1]['loss']:.3f}"
            )
    module.eval()
    return history


def train_classifier(
    images: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    backbone: TorchBackbone | None,
    cfg: TrainConfig | None = None,
    *,
    embeddings: np.ndarray | None = None,
    progress: Progress | None = None,
) -> TrainedClassifier:
    """Train on uint8 RGB images [N, S, S, 3] with their labels.

    ``embeddings`` (of ``images`` by ``backbone``) may be passed to skip
    recomputing them for the head.
    """
    import torch

    cfg = cfg or TrainConfig()
    classes = list(classes)
    y = check_labels(labels, classes)
    if len(images) != len(y):
        raise InvalidInput(f"{len(images)} images but {len(y)} labels")
    np.random.seed(cfg.seed)
    mode = choose_mode(y, cfg)
    if mode == "scratch" or backbone is None:
        mode = "scratch"
        torch.manual_seed(cfg.seed)
        module = torch.nn.Sequential(conv_encoder(256), torch.nn.Linear(256, len(classes)))
        size = images.shape[1]
        epochs = max(cfg.finetune_epochs, 30)
        history = _train_end_to_end(module, images, y, len(classes), cfg, epochs, 3e-3, progress)
        return TrainedClassifier(module, classes, mode, size, cfg.model_dump(), "scratch", history)
    if not isinstance(backbone, TorchBackbone):
        raise InvalidInput(
            "training needs a torch backbone (pretraining checkpoint, TorchScript or "
            "safetensors); ONNX backbones can embed and mine but not be trained through",
            field="backbone",
        )
    emb = embeddings if embeddings is not None else backbone.embed(images)
    w, b = train_head(emb, y, len(classes), cfg)
    if progress:
        progress(0.5 if mode == "finetune" else 1.0, f"head trained on {len(y)} labels")
    module = _head_module(backbone, w, b)
    history: list[dict[str, float]] = []
    if mode == "finetune":
        history = _train_end_to_end(
            module,
            images,
            y,
            len(classes),
            cfg,
            cfg.finetune_epochs,
            cfg.finetune_lr,
            (lambda f, m: progress(0.5 + f / 2, m)) if progress else None,
        )
    return TrainedClassifier(
        module, classes, mode, backbone.input_size, cfg.model_dump(), backbone.name, history
    )
