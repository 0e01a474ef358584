"""Job handlers of the flywheel: ``pretraining`` and ``training`` tasks run by
``citybrain worker`` (see :mod:`cloud.jobs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.jobs import JobContext, JobFailed


def _need(params: dict[str, Any], key: str) -> Any:
    if not params.get(key):
        raise JobFailed(f"task needs param {key!r}", field=key)
    return params[key]


def pretrain_handler(ctx: JobContext) -> dict[str, Any]:
    """params: ``dataset``; optional ``epochs``, ``backbone_file``, ``max_images``, ``seed``."""
    from cloud.catalog import Catalog
    from cloud.flywheel._pipeline import pretrain_dataset

    p = ctx.params
    with Catalog.open(ctx.settings) as cat:
        out = pretrain_dataset(
            cat,
            _need(p, "dataset"),
            epochs=int(p.get("epochs", 20)),
            backbone_file=Path(p["backbone_file"]) if p.get("backbone_file") else None,
            max_images=int(p.get("max_images", 5000)),
            seed=int(p.get("seed", 0)),
            created_by=str(p.get("created_by", "")),
            task_id=ctx.task_id,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
    return out.model_dump(mode="json")


def train_handler(ctx: JobContext) -> dict[str, Any]:
    """params: ``dataset``; optional ``task``, ``algorithm``, ``backbone_file``, ``config``."""
    from cloud.catalog import Catalog
    from cloud.flywheel._pipeline import train_dataset
    from cloud.flywheel._train import TrainConfig

    p = ctx.params
    with Catalog.open(ctx.settings) as cat:
        out = train_dataset(
            cat,
            _need(p, "dataset"),
            task=p.get("task", "classify"),
            algorithm=p.get("algorithm"),
            backbone_file=Path(p["backbone_file"]) if p.get("backbone_file") else None,
            config=TrainConfig(**p.get("config", {})),
            created_by=str(p.get("created_by", "")),
            task_id=ctx.task_id,
            progress=ctx.progress,
        )
    return {k: v for k, v in out.model_dump(mode="json").items() if k != "metrics"} | {
        "accuracy": out.metrics.accuracy
    }


HANDLERS = {"pretraining": pretrain_handler, "training": train_handler}
