"""The data flywheel: pretrain, embed, train, mine, evaluate, export.

Sub-packages: :mod:`cloud.flywheel.mining` (selection strategies, scale, the
simulation harness).

Backbones (:func:`pretrain_simclr`, :func:`load_backbone`,
:func:`scratch_backbone`) turn uint8 RGB images into embeddings;
:func:`train_classifier` trains a head on frozen embeddings or fine-tunes
(chosen by label count and recorded); :func:`evaluate` and :func:`gate` decide
what may be published; :func:`export_onnx` + :func:`parity_check` +
:func:`quantize_int8` produce the artifact the algorithm store packages.
:func:`train_detector` trains a box detector on the same backbones,
:func:`evaluate_detections` scores it (mAP@0.5) and
:func:`export_detector_onnx` + :func:`detector_parity_check` export it to the
wire contract's ``boxes`` output.
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
from cloud.flywheel._detect import (
    DetectConfig,
    TrainedDetector,
    check_boxes,
    decode_rows,
    detector_parity_check,
    export_detector_onnx,
    train_detector,
)
from cloud.flywheel._evaluate import (
    DetectMetrics,
    GateDecision,
    Metrics,
    average_precision,
    evaluate,
    evaluate_detections,
    gate,
    plot_confusion,
    plot_learning_curve,
    plot_pr_curves,
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
    "DetectConfig",
    "DetectMetrics",
    "GateDecision",
    "Metrics",
    "OnnxBackbone",
    "ParityReport",
    "PretrainResult",
    "QuantReport",
    "TorchBackbone",
    "TrainConfig",
    "TrainedClassifier",
    "TrainedDetector",
    "average_precision",
    "check_boxes",
    "check_labels",
    "decode_rows",
    "detector_parity_check",
    "evaluate",
    "evaluate_detections",
    "export_detector_onnx",
    "export_onnx",
    "gate",
    "load_backbone",
    "parity_check",
    "plot_confusion",
    "plot_learning_curve",
    "plot_pr_curves",
    "preprocess_contract",
    "pretrain_simclr",
    "quantize_int8",
    "scratch_backbone",
    "train_classifier",
    "train_detector",
]
