"""The data flywheel: pretrain, embed, train, mine, evaluate, export.

Sub-packages: :mod:`cloud.flywheel.mining` (selection strategies, scale, the
simulation harness).

Backbones (:func:`pretrain_simclr`, :func:`load_backbone`,
:func:`scratch_backbone`) turn uint8 RGB images into embeddings;
:func:`train_classifier` trains a head on frozen embeddings or fine-tunes
(chosen by label count and recorded); :func:`evaluate` and :func:`gate` decide
what may be published; :func:`export_onnx` + :func:`parity_check` +
:func:`quantize_int8` produce the artifact the algorithm store packages.
"""

from cloud.flywheel._backbones import (
    Backbone,
    OnnxBackbone,
    PretrainResult,
    TorchBackbone,
    load_backbone,
    pretrain_simclr,
    scratch_backbone,
)
from cloud.flywheel._evaluate import (
    GateDecision,
    Metrics,
    evaluate,
    gate,
    plot_confusion,
    plot_learning_curve,
)
from cloud.flywheel._export import (
    ParityReport,
    QuantReport,
    export_onnx,
    parity_check,
    preprocess_contract,
    quantize_int8,
)
from cloud.flywheel._train import TrainConfig, TrainedClassifier, check_labels, train_classifier

__all__ = [
    "Backbone",
    "GateDecision",
    "Metrics",
    "OnnxBackbone",
    "ParityReport",
    "PretrainResult",
    "QuantReport",
    "TorchBackbone",
    "TrainConfig",
    "TrainedClassifier",
    "check_labels",
    "evaluate",
    "export_onnx",
    "gate",
    "load_backbone",
    "parity_check",
    "plot_confusion",
    "plot_learning_curve",
    "preprocess_contract",
    "pretrain_simclr",
    "quantize_int8",
    "scratch_backbone",
    "train_classifier",
]
