"""Handler registry: task kind -> ``fn(ctx) -> dict | None``; the built-in import handler."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.catalog.models import TaskKind
from cloud.jobs._errors import JobFailed, UnknownHandler

if TYPE_CHECKING:
    from cloud.jobs._context import JobContext

Handler = Callable[["JobContext"], Any]

_REGISTRY: dict[TaskKind, Handler] = {}


def register_handler(kind: TaskKind | str, fn: Handler) -> Handler:
    """Make ``fn`` the handler of tasks of ``kind`` in this process (last one wins)."""
    _REGISTRY[TaskKind(kind)] = fn
    return fn


def _lazy(module: str, attr: str) -> Handler:
    """A handler imported on first call, so workers start without torch."""

    def run(ctx: JobContext) -> Any:
        return getattr(importlib.import_module(module), attr)(ctx)

    run.__name__ = attr
    return run


def registered_handlers() -> dict[TaskKind, Handler]:
    """A copy of this process's registry, with the built-in handlers."""
    handlers: dict[TaskKind, Handler] = {
        TaskKind.IMPORT: import_handler,
        TaskKind.PRETRAINING: _lazy("cloud.flywheel._handlers", "pretrain_handler"),
        TaskKind.TRAINING: _lazy("cloud.flywheel._handlers", "train_handler"),
        TaskKind.MINING: _lazy("cloud.flywheel._handlers", "mining_handler"),
    }
    handlers.update(_REGISTRY)
    return handlers


def load_handlers(spec: str) -> dict[TaskKind, Handler]:
    """Load handlers from ``module:attr``.

    ``attr`` is a mapping kind -> handler, or a callable returning one (it may
    also just call :func:`register_handler`). The result is merged over the
    registry.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownHandler(f"handler spec must be 'module:attr', got {spec!r}", field="handlers")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UnknownHandler(f"cannot load handlers {spec!r}: {e}", field="handlers") from e
    if callable(obj) and not isinstance(obj, Mapping):
        obj = obj()
    handlers = registered_handlers()
    if obj is not None:
        if not isinstance(obj, Mapping):
            raise UnknownHandler(f"{spec} is not a mapping of task kind -> handler")
        for kind, fn in obj.items():
            try:
                handlers[TaskKind(kind)] = fn
            except ValueError:
                raise UnknownHandler(f"{spec}: unknown task kind {kind!r}") from None
    return handlers


def as_result(value: Any) -> dict[str, Any]:
    """A handler's return value as the JSON dict stored on ``Task.result``."""
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        import json

        return json.loads(json.dumps(dict(value), default=str))
    return {"value": str(value)}


def import_handler(ctx: JobContext) -> dict[str, Any]:
    """Import a file or folder into a dataset: params ``path``, ``dataset``, optional
    ``labels_csv``, ``every_k``, ``every_s``, ``dedup_threshold``, ``created_by``.

    Importing is idempotent (content ids), so a re-run after a crash adds only
    what the first run had not committed.
    """
    params = ctx.params
    for key in ("path", "dataset"):
        if not params.get(key):
            raise JobFailed(f"import task needs param {key!r}", field=key)
    from cloud.catalog import Catalog
    from cloud.importers import import_path

    labels = params.get("labels_csv")
    options = {
        k: params[k] for k in ("every_k", "every_s", "dedup_threshold") if params.get(k) is not None
    }
    catalog = Catalog.open(ctx.settings)
    try:
        report = import_path(
            catalog,
            Path(params["path"]),
            params["dataset"],
            labels_csv=Path(labels) if labels else None,
            progress=ctx.progress,
            task_id=ctx.task_id,
            created_by=str(params.get("created_by", "")),
            **options,
        )
    finally:
        close = getattr(catalog, "close", None)
        if callable(close):
            close()
    return as_result(report)
