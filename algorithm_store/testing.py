"""Tiny real ONNX models and packages for tests and benchmarks (built with
``onnx.helper``; no torch). Other packages' tests may use these too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def tiny_classifier_onnx(
    path: Path | str,
    *,
    num_classes: int = 3,
    seed: int = 0,
    size: int = 8,
    batch: int | str = "N",
    external_data: str | None = None,
    min_weight_bytes: int = 0,
) -> Path:
    """Write a classifier: input ``[N, 3, size, size]`` float32 -> logits
    ``[N, num_classes]``. With ``min_weight_bytes`` the model flattens the
    image into a dense layer wide enough to hold that many weight bytes (for
    large-artifact benchmarks). With ``external_data`` the weights go to that
    file (relative location) beside the model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    rng = np.random.default_rng(seed)
    feat = 3
    nodes = []
    if min_weight_bytes:
        feat = 3 * size * size
        hidden = max(1, int(np.ceil(min_weight_bytes / (4 * feat))))
        w1 = rng.standard_normal((hidden, feat), dtype=np.float32) * 0.01
        w2 = rng.standard_normal((num_classes, hidden), dtype=np.float32) * 0.01
        inits = [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.zeros(num_classes, np.float32), "b2"),
        ]
        nodes += [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], transB=1),
        ]
    else:
        w = rng.standard_normal((num_classes, feat), dtype=np.float32)
        b = rng.standard_normal((num_classes,), dtype=np.float32)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes += [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external_data,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def tiny_package_kwargs(**over: Any) -> dict[str, Any]:
    """Typical :func:`algorithm_store.build_package` keyword arguments."""
    kw: dict[str, Any] = {
        "task": "classify",
        "labels": ["car", "person", "bike"],
        "scenes": ["intersection"],
        "detects": ["person"],
        "event_rules": [{"event": "person_seen", "labels": ["person"], "min_score": 0.6}],
        "metrics": {"accuracy": 0.9},
        "lineage": {"dataset_version": "ds-1", "training_task": "task-1"},
    }
    kw.update(over)
    return kw


def repack(
    archive: Path | str,
    dest: Path | str,
    mutate: Any = None,
    *,
    resign_key: Any = None,
    rehash: bool = False,
    manifest_update: dict[str, Any] | None = None,
) -> Path:
    """Unpack ``archive``, let ``mutate(dir)`` change files, optionally update
    the manifest, re-hash every file and re-sign with ``resign_key``, and pack
    it to ``dest``. Builds the hostile packages the refusal tests need."""
    import json
    import tempfile

    from edge_agent.protocol import (
        MANIFEST_NAME,
        FileEntry,
        Manifest,
        extract_package_archive,
        sha256_file,
        write_package_archive,
    )

    from ._keys import sign_manifest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        extract_package_archive(Path(archive), root)
        if mutate is not None:
            mutate(root)
        mpath = root / MANIFEST_NAME
        data = json.loads(mpath.read_text())
        if manifest_update:
            data.update(manifest_update)
        if rehash:
            data["files"] = {
                p.relative_to(root).as_posix(): FileEntry(
                    sha256=sha256_file(p), size=p.stat().st_size
                ).model_dump()
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != MANIFEST_NAME
            }
        if resign_key is not None:
            m = Manifest.model_validate({**data, "signature": None})
            data = json.loads(sign_manifest(m, resign_key).model_dump_json(by_alias=True))
        mpath.write_text(json.dumps(data))
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_package_archive(root, dest)
    return dest
