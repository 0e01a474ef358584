"""From a registered candidate model to a signed package in the algorithm store.

The gate decided at training time (candidate vs published version on the same
frozen test split) is enforced here: a candidate that is not better is refused
unless the caller explicitly overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from cloud.catalog import Catalog
from cloud.catalog.models import DatasetVersion, Model, ModelStatus
from cloud.errors import Conflict, InvalidInput, NotFound


def _store_error(e: Exception) -> Exception:
    from cloud import errors as ce

    kind = getattr(e, "kind", "")
    cls = {"not_found": ce.NotFound, "conflict": ce.Conflict}.get(kind, ce.InvalidInput)
    return cls(str(e), field=getattr(e, "field", None))


def publish_model(
    catalog: Catalog,
    store: Any,
    algorithm: str,
    version: str,
    *,
    channel: str | None = "canary",
    enforce_gate: bool = True,
    scenes: Sequence[str] = (),
    detects: Sequence[str] = (),
    event_rules: Sequence[dict[str, Any]] = (),
    fps: float = 2.0,
) -> dict[str, Any]:
    """Package model ``algorithm@version`` (its exported ONNX, preprocessing
    contract, metrics and lineage), sign it with the store key, publish it
    (optionally to ``channel``) and mark the model published."""
    import algorithm_store as st

    with catalog.transaction() as s:
        row = s.scalar(select(Model).where(Model.algorithm == algorithm, Model.version == version))
        if row is None:
            raise NotFound(f"no model {algorithm} {version}", field="version")
        if row.status == ModelStatus.PUBLISHED:
            raise Conflict(f"{algorithm} {version} is already published", field="version")
        gate = row.metrics.get("gate", {})
        if enforce_gate and not gate.get("publish", False):
            raise Conflict(
                f"gate refuses {algorithm} {version}: {gate.get('reason', 'no gate decision')} "
                "(use --no-gate to publish anyway)",
                field="gate",
            )
        dv = s.get(DatasetVersion, row.dataset_version_id) if row.dataset_version_id else None
        onnx_sha = row.artifacts.get("onnx")
        if not onnx_sha:
            raise InvalidInput(f"{algorithm} {version} has no exported ONNX artifact")
        labels, params, metrics = list(row.labels), dict(row.params), dict(row.metrics)
        task = row.task or "classify"
        lineage = {
            "dataset_version": f"{dv.dataset_id}@{dv.number}" if dv else None,
            "training_task": row.task_id,
            "backbone": row.backbone,
            "parent": params.get("baseline_version"),
            "params": {"mode": params.get("mode"), "config": params.get("config")},
        }
    if store.private_key is None:
        raise InvalidInput("the store's private key is needed to sign packages", field="key")
    work = catalog.tmp_dir / f"publish-{algorithm}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        onnx_path = work / "model.onnx"
        onnx_path.write_bytes(catalog.blobs.get(onnx_sha))
        size = params["preprocess"]["resize"][0]
        try:
            built = st.build_package(
                onnx_path,
                id=algorithm,
                version=version,
                task=task,
                labels=labels,
                private_key=store.private_key,
                out_dir=work / "pkg",
                input={
                    "name": "input",
                    "dtype": "float32",
                    "shape": ["N", 3, size, size],
                    "preprocess": params["preprocess"],
                },
                postprocess=params.get("postprocess") or {"output": "logits"},
                event_rules=list(event_rules),
                scenes=list(scenes),
                detects=list(detects),
                fps=fps,
                metrics={
                    k: float(metrics[k])
                    for k in ("accuracy", "balanced_accuracy", "ece", "map50")
                    if k in metrics
                },
                lineage=lineage,
            )
            info = store.publish(built.archive, channel=channel, reason=f"flywheel model {row.id}")
        except st.StoreError as e:
            raise _store_error(e) from None
    finally:
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()
    with catalog.transaction() as s:
        row = s.scalar(select(Model).where(Model.algorithm == algorithm, Model.version == version))
        row.status = ModelStatus.PUBLISHED
        row.artifacts = {**row.artifacts, "package": built.sha256}
    return {
        "algorithm": algorithm,
        "version": version,
        "package_sha256": built.sha256,
        "size": built.size,
        "channel": channel,
        "store": str(getattr(info, "version", version)),
    }
