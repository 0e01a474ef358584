"""Job handlers of the flywheel: ``pretraining``, ``training`` and ``mining``
tasks run by ``citybrain worker`` (see :mod:`cloud.jobs`)."""

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
    """params: ``dataset``; optional ``task`` (classify | detect), ``algorithm``,
    ``backbone_file``, ``config`` (TrainConfig or DetectConfig knobs by task)."""
    from cloud.catalog import Catalog
    from cloud.flywheel._pipeline import train_config, train_dataset

    p = ctx.params
    task = p.get("task", "classify")
    config = train_config(task, p.get("config") or {})
    with Catalog.open(ctx.settings) as cat:
        out = train_dataset(
            cat,
            _need(p, "dataset"),
            task=task,
            algorithm=p.get("algorithm"),
            backbone_file=Path(p["backbone_file"]) if p.get("backbone_file") else None,
            config=config,
            created_by=str(p.get("created_by", "")),
            task_id=ctx.task_id,
            progress=ctx.progress,
        )
    key = "map50" if out.task == "detect" else "accuracy"
    return {k: v for k, v in out.model_dump(mode="json").items() if k != "metrics"} | {
        key: getattr(out.metrics, key)
    }


def mining_handler(ctx: JobContext) -> dict[str, Any]:
    """params: ``dataset``, ``budget``; optional ``model`` (algorithm@version or
    version), ``strategy``, ``pools``, ``include_field``, ``seed``, ``created_by``.
    A re-run after a crash resumes the scoring checkpoint of this task and never
    opens a second annotation task."""
    from cloud.catalog import Catalog
    from cloud.flywheel._mine import mine_dataset

    p = ctx.params
    budget = p.get("budget")
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise JobFailed(f"task needs an integer param 'budget', got {budget!r}", field="budget")
    pools = p.get("pools")
    if pools is not None and (
        not isinstance(pools, list) or not all(isinstance(x, str) for x in pools)
    ):
        raise JobFailed("param 'pools' must be a list of pool names", field="pools")
    with Catalog.open(ctx.settings) as cat:
        out = mine_dataset(
            cat,
            _need(p, "dataset"),
            model_version=p.get("model") or None,
            budget=budget,
            strategy=str(p.get("strategy") or "auto"),
            pools=pools,
            include_field=bool(p.get("include_field", True)),
            seed=int(p.get("seed", 0)),
            task_id=ctx.task_id,
            progress=ctx.progress,
            check=ctx.check,
            created_by=str(p.get("created_by", "")),
        )
    return out.model_dump(mode="json")


HANDLERS = {
    "pretraining": pretrain_handler,
    "training": train_handler,
    "mining": mining_handler,
}
