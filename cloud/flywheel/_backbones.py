"""Backbones that turn images into embeddings.

Three kinds, one interface (:class:`Backbone`):

- ``ConvEncoder`` trained self-supervised on the unlabeled pool (SimCLR:
  two augmented views per image, NT-Xent loss), CPU-friendly at 64x64;
- a user-supplied pretrained backbone from a local file: ONNX, TorchScript,
  or safetensors weights + a named torchvision architecture — never fetched
  from a hub;
- the same ``ConvEncoder`` with random weights, trained from scratch with the
  head (the baseline that shows what pretraining buys).

Images enter as uint8 RGB arrays ``[N, H, W, 3]`` of the backbone's input size.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cloud.errors import InvalidInput

Progress = Callable[[float, str], None]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 64


class Backbone(Protocol):
    name: str
    input_size: int
    dim: int

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 [N, dim] embeddings of uint8 RGB images [N, S, S, 3]."""
        ...


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW normalised with ImageNet statistics."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _torch():  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return torch


def conv_encoder(dim: int = 256):  # type: ignore[no-untyped-def]
    """A small CNN: 4 conv blocks, global average pool -> ``dim`` features."""
    from torch import nn

    chans = [3, 32, 64, 128, dim]
    layers: list[Any] = []
    for i in range(4):
        layers += [
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True),
        ]
        layers.append(nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


@dataclass
class TorchBackbone:
    """A torch module mapping normalised NCHW float input to [N, dim]."""

    module: Any
    name: str
    input_size: int
    dim: int

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        torch = _torch()
        self.module.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(normalize(images[i : i + batch_size]))
                out.append(self.module(x).float().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)


@dataclass
class OnnxBackbone:
    """A user's ONNX feature extractor run with ONNX Runtime."""

    session: Any
    name: str
    input_size: int
    dim: int
    input_name: str
    source: Path | None = None  # the .onnx file (Ray workers load it from its bytes)

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            y = self.session.run(None, {self.input_name: normalize(images[i : i + batch_size])})[0]
            out.append(np.asarray(y, np.float32).reshape(len(y), -1))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _probe(backbone: Any, source: Path) -> Any:
    """Run one dummy batch; a corrupt or wrongly shaped model fails here,
    before any real compute is spent."""
    dummy = np.zeros((2, backbone.input_size, backbone.input_size, 3), np.uint8)
    try:
        y = backbone.embed(dummy)
    except Exception as e:  # noqa: BLE001 - any failure here is the file's fault
        raise InvalidInput(
            f"backbone {source.name} fails on a {backbone.input_size}x{backbone.input_size} "
            f"RGB batch: {str(e).splitlines()[0][:200]}",
            field="backbone",
        ) from None
    if y.ndim != 2 or y.shape[0] != 2 or y.shape[1] < 2:
        raise InvalidInput(
            f"backbone {source.name} must output [N, D] features, got shape {list(y.shape)}",
            field="backbone",
        )
    backbone.dim = int(y.shape[1])
    return backbone


def load_backbone(
    path: Path, *, arch: str | None = None, input_size: int | None = None
) -> Backbone:
    """Load a pretrained backbone from a local file.

    ``.onnx`` (ONNX Runtime), ``.pt``/``.ts``/``.torchscript`` (TorchScript),
    ``.safetensors`` (needs ``arch``, a torchvision classification model name,
    whose classifier is replaced by identity), or a citybrain checkpoint
    (``.ckpt``) written by :func:`pretrain_simclr`.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"backbone file not found: {path}", field="backbone")
    suffix = path.suffix.lower()
    size = input_size or DEFAULT_SIZE
    name = f"{path.stem}-{file_sha256(path)[:12]}"
    if suffix == ".onnx":
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(
                f"backbone {path.name} is not a loadable ONNX model: {str(e)[:200]}",
                field="backbone",
            ) from None
        inp = sess.get_inputs()[0]
        shape = inp.shape
        if input_size is None and len(shape) == 4 and isinstance(shape[2], int):
            size = shape[2]
        return _probe(OnnxBackbone(sess, name, size, 0, inp.name, path), path)
    torch = _torch()
    if suffix in (".pt", ".ts", ".torchscript", ".jit"):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(
                f"backbone {path.name} is not a TorchScript file: {str(e).splitlines()[0][:200]}",
                field="backbone",
            ) from None
        return _probe(TorchBackbone(module, name, size, 0), path)
    if suffix == ".safetensors":
        if not arch:
            raise InvalidInput(
                "a .safetensors backbone needs --arch (a torchvision model name, e.g. resnet18)",
                field="arch",
            )
        import torchvision
        from safetensors.torch import load_file

        try:
            module = torchvision.models.get_model(arch, weights=None)
        except ValueError:
            raise InvalidInput(f"unknown torchvision architecture {arch!r}", field="arch") from None
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise InvalidInput(
                f"backbone {path.name} is not a safetensors file: {str(e)[:200]}", field="backbone"
            ) from None
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise InvalidInput(
                f"backbone {path.name} does not fit {arch}: {str(e).splitlines()[0][:200]}",
                field="backbone",
            ) from None
        for attr in ("fc", "classifier", "head", "heads"):
            if hasattr(module, attr):
                setattr(module, attr, torch.nn.Identity())
                break
        return _probe(TorchBackbone(module, name, input_size or 224, 0), path)
    if suffix == ".ckpt":
        return load_checkpoint_backbone(path)
    raise InvalidInput(
        f"unsupported backbone file {path.name}: use .onnx, .pt (TorchScript), "
        ".safetensors (+ --arch) or a citybrain .ckpt",
        field="backbone",
    )


def scratch_backbone(seed: int = 0, dim: int = 256) -> TorchBackbone:
    torch = _torch()
    torch.manual_seed(seed)
    return TorchBackbone(conv_encoder(dim), f"scratch-s{seed}", DEFAULT_SIZE, dim)


# ---------------------------------------------------------------------------
# Self-supervised pretraining (SimCLR)
# ---------------------------------------------------------------------------


def _augment(min_scale: float = 0.6):  # type: ignore[no-untyped-def]
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(DEFAULT_SIZE, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    )


def nt_xent(z1: Any, z2: Any, temperature: float = 0.2) -> Any:
    """SimCLR's normalised temperature-scaled cross entropy over 2N views."""
    torch = _torch()
    f = torch.nn.functional
    z = f.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return f.cross_entropy(sim, targets)


@dataclass
class PretrainResult:
    checkpoint: Path
    epochs: int
    losses: list[float]
    seconds: float
    backbone: TorchBackbone


def pretrain_simclr(
    images: np.ndarray,
    checkpoint: Path,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 3e-3,
    dim: int = 256,
    seed: int = 0,
    min_crop: float = 0.6,
    temperature: float = 0.2,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PretrainResult:
    """Self-supervised pretraining on uint8 RGB images [N, 64, 64, 3].

    Resumable: the checkpoint is rewritten atomically after every epoch with
    model, optimiser, epoch and RNG state; calling again with the same path
    continues from the last finished epoch.
    """
    torch = _torch()
    if len(images) < 2:
        raise InvalidInput(f"pretraining needs at least 2 images, got {len(images)}")
    if images.ndim != 4 or images.shape[1:] != (DEFAULT_SIZE, DEFAULT_SIZE, 3):
        raise InvalidInput(f"images must be [N, 64, 64, 3] uint8, got {list(images.shape)}")
    torch.manual_seed(seed)
    encoder = conv_encoder(dim)
    head = torch.nn.Sequential(
        torch.nn.Linear(dim, dim), torch.nn.ReLU(inplace=True), torch.nn.Linear(dim, 128)
    )
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    start, losses = 0, []
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        encoder.load_state_dict(state["encoder"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start, losses = state["epoch"], state["losses"]
        torch.set_rng_state(state["rng"])
    aug = _augment(min_crop)
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # uint8 NCHW
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    bs = min(batch_size, len(images))
    steps = max(1, len(images) // bs)
    t0 = time.perf_counter()
    for epoch in range(start, epochs):
        encoder.train()
        head.train()
        perm = torch.randperm(len(images))
        total = 0.0
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            batch = x_all[idx]
            v1 = torch.stack([aug(img) for img in batch]).float().div(255).sub(mean).div(std)
            v2_ = torch.stack([aug(img) for img in batch]).float().div(255).sub(mean).div(std)
            loss = nt_xent(head(encoder(v1)), head(encoder(v2_)), temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / steps)
        tmp = checkpoint.with_suffix(".tmp")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "encoder": encoder.state_dict(),
                "head": head.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch + 1,
                "losses": losses,
                "rng": torch.get_rng_state(),
                "dim": dim,
                "kind": "citybrain-simclr",
            },
            tmp,
        )
        tmp.replace(checkpoint)
        if progress:
            progress((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.3f}")
        if should_stop and should_stop():
            break
    name = f"simclr-{file_sha256(checkpoint)[:12]}"
    return PretrainResult(
        checkpoint,
        len(losses),
        losses,
        time.perf_counter() - t0,
        TorchBackbone(encoder.eval(), name, DEFAULT_SIZE, dim),
    )


def load_checkpoint_backbone(path: Path) -> TorchBackbone:
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert state.get("kind") == "citybrain-simclr"
    except Exception:  # noqa: BLE001
        raise InvalidInput(f"{path.name} is not a citybrain pretraining checkpoint") from None
    enc = conv_encoder(state["dim"])
    enc.load_state_dict(state["encoder"])
    return TorchBackbone(enc.eval(), f"simclr-{file_sha256(path)[:12]}", DEFAULT_SIZE, state["dim"])


def describe(backbone: Backbone) -> dict[str, Any]:
    return {"name": backbone.name, "input_size": backbone.input_size, "dim": backbone.dim}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
