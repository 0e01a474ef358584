"""ONNX export of a trained classifier, parity check, int8 quantization.

The exported graph takes ``input`` float32 [N, 3, S, S] (RGB, scaled by 1/255,
normalised with ImageNet mean/std — the preprocessing contract written into
the store manifest by :func:`preprocess_contract`) and returns ``logits`` [N, C].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from cloud.errors import InvalidInput
from cloud.flywheel._backbones import MEAN, STD, normalize
from cloud.flywheel._train import TrainedClassifier

#: max |ORT - torch| on logits for the export to be accepted
PARITY_ATOL = 1e-3


class ParityReport(BaseModel):
    samples: int
    max_abs_diff: float
    atol: float
    top1_agreement: float
    ok: bool


def preprocess_contract(input_size: int) -> dict[str, Any]:
    """The manifest's ``input.preprocess`` for an exported classifier."""
    return {
        "resize": [input_size, input_size],
        "color": "RGB",
        "scale": 1 / 255,
        "mean": list(MEAN),
        "std": list(STD),
        "layout": "NCHW",
    }


def export_module(module: Any, input_size: int, out: Path, *, output: str, opset: int = 17) -> Path:
    """Export a torch module ``input`` float32 [N, 3, S, S] -> ``output`` [N, ...] to
    ONNX (dynamic batch), check it with ``onnx.checker`` and move it into place."""
    import onnx
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    module.eval()
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, input_size, input_size),),
        str(tmp),
        input_names=["input"],
        output_names=[output],
        dynamic_axes={"input": {0: "N"}, output: {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    tmp.replace(out)
    return out


def export_onnx(model: TrainedClassifier, out: Path, *, opset: int = 17) -> Path:
    """ONNX: ``input`` float32 [N, 3, S, S] -> ``logits`` [N, C]."""
    return export_module(model.module, model.input_size, out, output="logits", opset=opset)


def parity_check(
    model: TrainedClassifier, onnx_path: Path, images: np.ndarray, *, atol: float = PARITY_ATOL
) -> ParityReport:
    """Compare ONNX Runtime and PyTorch logits on real samples."""
    import onnxruntime as ort
    import torch

    if len(images) == 0:
        raise InvalidInput("parity check needs at least one real sample")
    x = normalize(images)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.inference_mode():
        want = model.module.eval()(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    return ParityReport(
        samples=len(images), max_abs_diff=diff, atol=atol, top1_agreement=agree, ok=diff <= atol
    )


class QuantReport(BaseModel):
    path: str
    accuracy_fp32: float
    accuracy_int8: float
    delta: float
    size_fp32: int
    size_int8: int


def quantize_int8(
    onnx_path: Path,
    out: Path,
    calibration: np.ndarray,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
) -> QuantReport:
    """Static int8 quantization (QDQ) with ONNX Runtime, calibrated on real
    samples; reports the accuracy delta on ``eval_images``."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(
                [{"input": normalize(calibration[i : i + 1])} for i in range(len(calibration))]
            )

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self._it, None)

    pre = Path(out).with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    pre.unlink(missing_ok=True)

    def acc(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = sess.run(None, {"input": normalize(eval_images)})[0].argmax(1)
        return float((pred == eval_labels).mean())

    a32, a8 = acc(Path(onnx_path)), acc(Path(out))
    return QuantReport(
        path=str(out),
        accuracy_fp32=a32,
        accuracy_int8=a8,
        delta=a8 - a32,
        size_fp32=Path(onnx_path).stat().st_size,
        size_int8=Path(out).stat().st_size,
    )
