"""Flywheel I core: backbones, training from few labels, evaluation gate, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.errors import InvalidInput
from cloud.flywheel import (
    TrainConfig,
    evaluate,
    export_onnx,
    gate,
    load_backbone,
    parity_check,
    plot_confusion,
    pretrain_simclr,
    quantize_int8,
    scratch_backbone,
    train_classifier,
)
from cloud.flywheel._synthetic import CLASSES, street_scenes


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    return street_scenes(96, seed=3)


def _labels(y: np.ndarray) -> list[str]:
    return [CLASSES[i] for i in y]


def test_bad_labels_fail_before_compute(scenes) -> None:
    x, y = scenes
    bb = scratch_backbone()
    with pytest.raises(InvalidInput, match="0 labels"):
        train_classifier(x[:0], [], CLASSES, bb)
    with pytest.raises(InvalidInput, match="one class only"):
        train_classifier(x[:3], ["cone"] * 3, CLASSES, bb)
    with pytest.raises(InvalidInput, match="unknown classes"):
        train_classifier(x[:2], ["cone", "tram"], CLASSES, bb)


def test_pretraining_is_resumable(tmp_path: Path, scenes) -> None:
    x, _ = scenes
    ckpt = tmp_path / "ssl.ckpt"
    seen: list[str] = []
    first = pretrain_simclr(
        x[:32], ckpt, epochs=1, batch_size=16, progress=lambda f, m: seen.append(m)
    )
    assert first.epochs == 1 and ckpt.exists() and seen == [f"epoch 1/1 loss {first.losses[0]:.3f}"]
    second = pretrain_simclr(x[:32], ckpt, epochs=2, batch_size=16)
    assert second.epochs == 2 and second.losses[0] == first.losses[0]  # continued, not restarted
    bb = load_backbone(ckpt)
    assert bb.embed(x[:4]).shape == (4, 256)


def test_backbone_files_bad_and_good(tmp_path: Path) -> None:
    import torch

    with pytest.raises(InvalidInput, match="not found"):
        load_backbone(tmp_path / "nope.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08garbage")
    with pytest.raises(InvalidInput, match="not a loadable ONNX"):
        load_backbone(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(InvalidInput, match="not a TorchScript"):
        load_backbone(junk)
    with pytest.raises(InvalidInput, match="unsupported backbone"):
        load_backbone(bad.rename(tmp_path / "model.h5"))

    # wrong output shape: a TorchScript module returning feature maps, not [N, D]
    conv = torch.jit.script(torch.nn.Conv2d(3, 4, 3))
    conv.save(str(tmp_path / "maps.pt"))
    with pytest.raises(InvalidInput, match=r"\[N, D\]"):
        load_backbone(tmp_path / "maps.pt")

    good = torch.jit.script(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 8))
    )
    good.save(str(tmp_path / "flat.pt"))
    assert load_backbone(tmp_path / "flat.pt").dim == 8

    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(InvalidInput, match="needs --arch"):
        load_backbone(tmp_path / "w.safetensors")
    with pytest.raises(InvalidInput, match="does not fit resnet18"):
        load_backbone(tmp_path / "w.safetensors", arch="resnet18")


def test_train_evaluate_gate_export_parity_quantize(tmp_path: Path, scenes) -> None:
    x, y = scenes
    bb = scratch_backbone(seed=1)
    train, test = slice(0, 64), slice(64, 96)
    model = train_classifier(x[train], _labels(y[train]), CLASSES, bb, TrainConfig(seed=7))
    assert model.mode == "head"  # few labels -> frozen embeddings
    again = train_classifier(x[train], _labels(y[train]), CLASSES, bb, TrainConfig(seed=7))
    p1, p2 = model.predict_proba(x[test]), again.predict_proba(x[test])
    np.testing.assert_allclose(p1, p2, atol=1e-5)  # seeded: a rerun reproduces the model

    m = evaluate(p1, y[test], CLASSES)
    assert m.n == 32 and len(m.confusion) == 4 and sum(map(sum, m.confusion)) == 32
    assert m.accuracy > 0.25  # better than chance on 4 balanced-ish classes
    assert 0 <= m.ece <= 1
    assert plot_confusion(m, tmp_path / "cm.png").stat().st_size > 1000

    assert gate(m, None).publish
    assert not gate(m, m).publish  # equal is not better
    worse = m.model_copy(update={"accuracy": m.accuracy - 0.1})
    assert gate(m, worse).publish and not gate(worse, m).publish

    onnx_path = export_onnx(model, tmp_path / "model.onnx")
    rep = parity_check(model, onnx_path, x[test])
    assert rep.ok and rep.top1_agreement == 1.0, rep

    q = quantize_int8(onnx_path, tmp_path / "model.int8.onnx", x[:16], x[test], y[test])
    assert q.size_int8 < q.size_fp32
    assert abs(q.delta) <= 0.5 and Path(q.path).exists()


def test_scratch_and_finetune_modes(scenes) -> None:
    x, y = scenes
    cfg = TrainConfig(mode="scratch", finetune_epochs=1, seed=0)
    m = train_classifier(x[:32], _labels(y[:32]), CLASSES, None, cfg)
    assert m.mode == "scratch" and m.predict_proba(x[:4]).shape == (4, 4)
    cfg = TrainConfig(finetune_min_labels=8, finetune_min_per_class=1, finetune_epochs=1)
    m = train_classifier(x[:32], _labels(y[:32]), CLASSES, scratch_backbone(), cfg)
    assert m.mode == "finetune" and len(m.history) == 1
