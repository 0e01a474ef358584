"""A mining round on a catalog dataset: score the pool (including the field
hard cases edge devices sent back), select ``budget`` samples with a strategy,
and open an annotation task with model pre-labels and the reason each sample
was chosen.

Steps of :func:`mine_dataset` (all bad input is refused before any compute)::

    validate budget / strategy / pools / model / pool size
    copy field hard cases of the model's algorithm into the dataset's
        ``field_hard`` pool (membership only: the Sample keeps its provenance)
    embed what has no embedding yet (incremental, with progress)
    score the pool with the model's ONNX (batched, checkpointed; on Ray
        workers from ``ray_min_samples`` samples to score, like embedding)
    select with the strategy (a resumable MiningRun)
    open the annotation task + pre-labels + reasons + lineage (one transaction)

The run's scratch state lives under ``<data_dir>/mining/<task id>``: a job that
is interrupted half-way and re-run under the same task id resumes from the
first unscored batch and reuses a finished selection; once the annotation task
exists a re-run returns it instead of opening a second one. Samples already
queued in an open annotation task of the dataset are never queued twice.

Errors: :class:`~cloud.flywheel.mining.MiningInputError` (an
:class:`~cloud.errors.InvalidInput`) and its
:class:`~cloud.flywheel.mining.BudgetExceedsPool` for bad budgets, pools,
strategies and models; :class:`~cloud.errors.NotFound` for a dataset or model
version that does not exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.catalog import Catalog, SampleIn
from cloud.catalog.models import (
    AnnotationAssignment,
    Dataset,
    DatasetSample,
    DatasetVersion,
    LineageEdge,
    Model,
    ModelStatus,
    Sample,
    Task,
    TaskKind,
    TaskStatus,
)
from cloud.errors import NotFound
from cloud.flywheel._ray import choose_executor, fan_out, model_payload
from cloud.flywheel.mining import (
    BudgetExceedsPool,
    MiningInputError,
    MiningRun,
    RunConflict,
    annotation_batch,
    make_strategy,
    queued_positions,
)

Progress = Callable[[float, str], None]

#: pools mined when none are named
DEFAULT_POOLS = ("main", "field_hard")
#: images per ONNX scoring batch (one checkpoint flag each)
SCORE_BATCH = 256
_CHUNK = 500
_OPEN = (TaskStatus.QUEUED, TaskStatus.RUNNING)


class MinedItem(BaseModel):
    sample_id: str
    pool: str
    from_field: bool
    reason: str
    prelabel: str | None
    prelabel_score: float | None


class MiningOutcome(BaseModel):
    """What a mining round did (also the mining task's result)."""

    task_id: str
    annotation_task_id: str
    dataset: str
    model: str | None
    strategy: str
    budget: int
    selected: int
    from_field: int
    pool_size: int
    field_pool: int
    already_queued: int
    labeled: int
    reason_kinds: dict[str, int]
    items: list[MinedItem]
    resumed: bool = False


# ---------------------------------------------------------------- look-ups


def _chunks(seq: Sequence[str], n: int = _CHUNK):  # type: ignore[no-untyped-def]
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _semver(v: str) -> tuple:
    from edge_agent.protocol import semver_key

    try:
        return semver_key(v)
    except Exception:  # noqa: BLE001 - a non-semver version sorts first
        return (-1,)


def dataset_models(session: Session, ds: Dataset) -> list[Model]:
    """Models trained on a version of ``ds``, oldest first."""
    ver_ids = select(DatasetVersion.id).where(DatasetVersion.dataset_id == ds.id)
    return list(
        session.scalars(
            select(Model)
            .where(Model.dataset_version_id.in_(ver_ids))
            .order_by(Model.created_at, Model.id)
        )
    )


def resolve_model(session: Session, ds: Dataset, ref: str | None) -> Model | None:
    """``algorithm@version``, or a version of the dataset's algorithm; by
    default the newest published model trained on ``ds``, else its newest
    candidate, else None (no model yet: cold-start mining). Scoring reads class
    probabilities, so only classifiers count by default; a detector named explicitly is
    refused (mining a box dataset runs on embeddings alone, like a cold start)."""
    mine = [m for m in dataset_models(session, ds) if m.task == "classify"]
    if ref is None:
        usable = [m for m in mine if m.status in (ModelStatus.PUBLISHED, ModelStatus.CANDIDATE)]
        pub = [m for m in usable if m.status == ModelStatus.PUBLISHED]
        pick = pub or usable
        return max(pick, key=lambda m: (_semver(m.version), m.id)) if pick else None
    ref = ref.strip()
    if not ref:
        raise MiningInputError("--model is empty", field="model")
    if "@" in ref:
        alg, _, ver = ref.partition("@")
        row = session.scalar(select(Model).where(Model.algorithm == alg, Model.version == ver))
        if row is None:
            known = sorted(
                session.scalars(select(Model.version).where(Model.algorithm == alg)), key=_semver
            )
            hint = f"versions of {alg!r}: {', '.join(known)}" if known else f"no model {alg!r}"
            raise NotFound(f"model version {ref!r} does not exist ({hint})", field="model")
        return _classifier(row)
    algs = {m.algorithm for m in mine} or {re.sub(r"[^A-Za-z0-9_.-]+", "-", ds.name).strip("-")}
    rows = list(
        session.scalars(select(Model).where(Model.algorithm.in_(algs), Model.version == ref))
    )
    if not rows:
        known = sorted({f"{m.algorithm}@{m.version}" for m in mine})
        hint = f"models of {ds.name!r}: {', '.join(known)}" if known else "train one first"
        raise NotFound(
            f"model version {ref!r} does not exist for dataset {ds.name!r} ({hint})",
            field="model",
        )
    if len(rows) > 1:
        names = ", ".join(f"{m.algorithm}@{m.version}" for m in rows)
        raise MiningInputError(
            f"version {ref!r} is ambiguous ({names}); pass algorithm@version", field="model"
        )
    return _classifier(rows[0])


def _classifier(row: Model) -> Model:
    if row.task != "classify":
        raise MiningInputError(
            f"{row.algorithm}@{row.version} is a {row.task} model: mining scores class "
            "probabilities, so it takes a classifier (omit --model to mine a box dataset on "
            "embeddings alone)",
            field="model",
        )
    return row


def queued_sample_ids(session: Session, dataset_id: int) -> set[str]:
    """Samples in an open (queued or running) annotation task of the dataset."""
    return set(
        session.scalars(
            select(AnnotationAssignment.sample_id)
            .join(Task, Task.id == AnnotationAssignment.task_id)
            .where(
                Task.dataset_id == dataset_id,
                Task.kind == TaskKind.ANNOTATION,
                Task.status.in_(_OPEN),
            )
        )
    )


def _existing_annotation_task(session: Session, task_id: str) -> str | None:
    return session.scalar(
        select(LineageEdge.entity_id).where(
            LineageEdge.task_id == task_id,
            LineageEdge.direction == "output",
            LineageEdge.entity == "task",
            LineageEdge.role == "annotation",
        )
    )


def _recorded_outcome(session: Session, task_id: str, ann_id: str) -> MiningOutcome:
    """The outcome of a mining task that already opened its annotation task."""
    from cloud.catalog.models import Annotation

    t = session.get(Task, task_id)
    if t is not None and t.result.get("annotation_task_id") == ann_id:
        try:
            return MiningOutcome.model_validate({**t.result, "resumed": True})
        except ValueError:
            pass  # rebuilt from the annotation task below
    p = dict(t.params or {}) if t is not None else {}
    items = []
    for a, pre, pool in session.execute(
        select(AnnotationAssignment, Annotation, DatasetSample.pool)
        .outerjoin(Annotation, Annotation.id == AnnotationAssignment.prelabel_id)
        .outerjoin(
            DatasetSample,
            (DatasetSample.sample_id == AnnotationAssignment.sample_id)
            & (DatasetSample.dataset_id == (t.dataset_id if t is not None else -1)),
        )
        .where(AnnotationAssignment.task_id == ann_id)
        .order_by(AnnotationAssignment.id)
    ):
        items.append(
            MinedItem(
                sample_id=a.sample_id,
                pool=pool or "",
                from_field=" · field " in (a.reason or ""),
                reason=a.reason or "",
                prelabel=pre.label if pre is not None else None,
                prelabel_score=pre.score if pre is not None else None,
            )
        )
    return MiningOutcome(
        task_id=task_id,
        annotation_task_id=ann_id,
        dataset=str(p.get("dataset", "")),
        model=p.get("model"),
        strategy=str(p.get("strategy", "")),
        budget=int(p.get("budget", len(items))),
        selected=len(items),
        from_field=sum(it.from_field for it in items),
        pool_size=0,
        field_pool=0,
        already_queued=0,
        labeled=0,
        reason_kinds=dict(Counter(_reason_kind(it.reason) for it in items).most_common()),
        items=items,
        resumed=True,
    )


def _reason_kind(reason: str) -> str:
    """A reason with its numbers blanked, to count reasons by kind."""
    return re.sub(r"\d[\d.,]*(e-?\d+)?%?", "#", reason)


# ---------------------------------------------------------------- pool plan


class _Plan(BaseModel):
    """The pool as decided before any compute."""

    dataset_id: int
    dataset: str
    pools: list[str]
    candidates: list[str]  # sorted: unlabeled members of pools + field cases
    field_ids: list[str]  # field cases among the candidates
    field_to_copy: list[str]  # field cases not yet members of the dataset
    field_dataset_id: int | None
    queued: list[str]  # candidates already queued for annotation
    labeled: list[str]
    labeled_labels: list[str | None]
    member_pool: dict[str, str]


def _plan(
    catalog: Catalog,
    dataset: str,
    *,
    pools: Sequence[str] | None,
    include_field: bool,
    algorithm: str | None,
) -> _Plan:
    from cloud.ingest import FIELD_POOL, field_dataset_name

    with catalog.transaction() as s:
        ds = catalog.get_dataset(dataset, session=s)
        members = list(
            s.execute(
                select(DatasetSample.sample_id, DatasetSample.pool, DatasetSample.label).where(
                    DatasetSample.dataset_id == ds.id
                )
            )
        )
        labeled_ids = set(
            s.scalars(
                select(DatasetSample.sample_id).where(
                    DatasetSample.dataset_id == ds.id,
                    DatasetSample.current_annotation_id.is_not(None),
                )
            )
        )
        if not members:
            raise MiningInputError(
                f"dataset {ds.name!r} has no samples: import some first", field="dataset"
            )
        present = Counter(p for _, p, _ in members)
        if pools is None:
            wanted = list(DEFAULT_POOLS)
        else:
            wanted = list(dict.fromkeys(p.strip() for p in pools))
            if not wanted or any(not p for p in wanted):
                raise MiningInputError("name at least one pool (e.g. main)", field="pool")
            unknown = [p for p in wanted if p not in present and p != FIELD_POOL]
            if unknown:
                have = ", ".join(f"{p} ({n})" for p, n in sorted(present.items()))
                raise MiningInputError(
                    f"dataset {ds.name!r} has no pool {unknown[0]!r}; its pools: {have}",
                    field="pool",
                )
        member_pool = {sid: p for sid, p, _ in members}
        cand = {sid for sid, p, _ in members if p in wanted and sid not in labeled_ids}
        field_ids: set[str] = set()
        field_ds_id = None
        if include_field and algorithm:
            fds = s.scalar(select(Dataset).where(Dataset.name == field_dataset_name(algorithm)))
            if fds is not None and fds.id != ds.id:
                field_ds_id = fds.id
                field_ids = set(
                    s.scalars(
                        select(DatasetSample.sample_id).where(
                            DatasetSample.dataset_id == fds.id, DatasetSample.pool == FIELD_POOL
                        )
                    )
                )
                field_ids -= labeled_ids
            if ds.name == field_dataset_name(algorithm):  # mining the field set itself
                field_ids = {sid for sid, p, _ in members if p == FIELD_POOL} - labeled_ids
        cand |= field_ids
        queued = queued_sample_ids(s, ds.id) & cand
        labeled = sorted(labeled_ids)
        label_of = {sid: lab for sid, _, lab in members}
        return _Plan(
            dataset_id=ds.id,
            dataset=ds.name,
            pools=wanted,
            candidates=sorted(cand),
            field_ids=sorted(field_ids),
            field_to_copy=sorted(field_ids - set(member_pool)),
            field_dataset_id=field_ds_id,
            queued=sorted(queued),
            labeled=labeled,
            labeled_labels=[label_of.get(sid) for sid in labeled],
            member_pool=member_pool,
        )


# ---------------------------------------------------------------- scoring


def _onnx_session(catalog: Catalog, model: Model):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    sha = (model.artifacts or {}).get("onnx")
    if not sha or not catalog.blobs.exists(sha):
        raise MiningInputError(
            f"model {model.algorithm}@{model.version} has no ONNX artifact to score with",
            field="model",
        )
    path = catalog.blobs.path(sha) if hasattr(catalog.blobs, "path") else None
    if path is None:
        return ort.InferenceSession(catalog.blobs.get(sha), providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _input_size(model: Model) -> int:
    from cloud.flywheel._backbones import DEFAULT_SIZE

    resize = ((model.params or {}).get("preprocess") or {}).get("resize")
    return int(resize[0]) if resize else DEFAULT_SIZE


def _score_pool(
    catalog: Catalog,
    model: Model,
    ids: Sequence[str],
    workdir: Path,
    *,
    progress: Progress,
    check: Callable[[], None] | None,
) -> np.ndarray:
    """Class probabilities of ``ids`` by the model's ONNX into
    ``workdir/probs.f32``, one flag per batch in ``workdir/scored.u8``.
    In-process, or fanned out over Ray workers when the batches still to
    score hold ``Settings.ray_min_samples`` samples or more
    (:func:`cloud.flywheel._ray.choose_executor`); either way batches are
    kept in order as they finish, so an interrupted run scores only the rest."""
    from cloud.flywheel._backbones import normalize
    from cloud.flywheel._pipeline import load_images

    sess = _onnx_session(catalog, model)
    name = sess.get_inputs()[0].name
    size = _input_size(model)
    n, c = len(ids), len(model.labels)
    nb = -(-n // SCORE_BATCH)
    probs_path, done_path = workdir / "probs.f32", workdir / "scored.u8"
    mode = "r+" if probs_path.exists() and done_path.exists() else "w+"
    probs = np.memmap(probs_path, dtype=np.float32, mode=mode, shape=(n, c))
    done = np.memmap(done_path, dtype=np.uint8, mode=mode, shape=(nb,))
    todo = [b for b in range(nb) if not done[b]]
    spans = [(b * SCORE_BATCH, min(n, (b + 1) * SCORE_BATCH)) for b in todo]
    tag = f"{model.algorithm}@{model.version}"

    def keep(k: int, logits: np.ndarray, where: str) -> None:
        s, e = spans[k]
        if logits.shape != (e - s, c):
            raise MiningInputError(
                f"model {tag} returns shape {logits.shape}, expected {(e - s, c)} for its "
                f"{c} labels",
                field="model",
            )
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[s:e] = z / z.sum(axis=1, keepdims=True)
        probs.flush()
        done[todo[k]] = 1
        done.flush()
        progress((k + 1) / len(todo), f"scored {e}/{n} with {tag}{where}")

    n_todo = sum(e - s for s, e in spans)
    where, why = choose_executor(n_todo, catalog.settings)
    if spans:
        progress(0.0, f"scoring {n_todo} samples with {tag}: {why}")
    if where == "local":
        for k, (s, e) in enumerate(spans):
            if check:
                check()
            keep(k, sess.run(None, {name: normalize(load_images(catalog, ids[s:e], size))})[0], "")
    elif spans:
        sha = (model.artifacts or {})["onnx"]
        payload = model_payload(catalog.blobs.get(sha), tag, size, c, name)

        def deliver(k: int, logits: np.ndarray, where: str) -> None:
            keep(k, logits, where)
            if check:
                check()

        fan_out(catalog, payload, [ids[s:e] for s, e in spans], deliver)
    return np.memmap(probs_path, dtype=np.float32, mode="r", shape=(n, c))


def _pool_matrix(store, ids: Sequence[str], path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The embeddings of ``ids`` as a float32 memmap at ``path``, copied in chunks."""
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(len(ids), store.dim))
    step = 65_536
    for s in range(0, len(ids), step):
        mm[s : s + step] = store.get(ids[s : s + step])
    mm.flush()
    return np.memmap(path, dtype=np.float32, mode="r", shape=(len(ids), store.dim))


def _fresh_workdir(workdir: Path, key: dict[str, Any]) -> None:
    """Keep the checkpoint only when it belongs to the same pool and model."""
    spec = workdir / "pool.json"
    text = json.dumps(key, sort_keys=True)
    if workdir.exists() and (not spec.exists() or spec.read_text() != text):
        shutil.rmtree(workdir)  # scratch of a run over another pool: start over
    workdir.mkdir(parents=True, exist_ok=True)
    if not spec.exists():
        spec.write_text(text)


# ---------------------------------------------------------------- checks


class MiningPlan(BaseModel):
    """A validated mining request: what :func:`mine_dataset` will mine."""

    model_config = {"arbitrary_types_allowed": True}

    dataset: str
    budget: int
    strategy: str
    model_key: str | None
    algorithm: str
    pools: list[str]
    pool_size: int
    field_pool: int
    already_queued: int
    labels: list[str]
    plan: _Plan
    model: Any = None


def prepare_mining(
    catalog: Catalog,
    dataset: str,
    *,
    model_version: str | None = None,
    budget: Any,
    strategy: str = "auto",
    pools: Sequence[str] | None = None,
    include_field: bool = True,
) -> MiningPlan:
    """Every check :func:`mine_dataset` makes before compute (cheap: catalog
    queries only), so the API can refuse a bad request before queueing it."""
    from cloud.flywheel._pipeline import _slug

    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise MiningInputError(f"budget must be a whole number, got {budget!r}", field="budget")
    budget = int(budget)
    if budget <= 0:
        raise MiningInputError(f"budget must be at least 1, got {budget}", field="budget")
    make_strategy(strategy)  # unknown strategy: fail before any compute
    with catalog.transaction() as s:
        ds = catalog.get_dataset(dataset, session=s)
        model = resolve_model(s, ds, model_version)
        if model is not None:
            if model.task != "classify":
                raise MiningInputError(
                    f"model {model.algorithm}@{model.version} is a {model.task} model; "
                    "mining supports classifiers",
                    field="model",
                )
            if not model.labels:
                raise MiningInputError(
                    f"model {model.algorithm}@{model.version} has no labels", field="model"
                )
            s.expunge(model)
        ds_labels = list(ds.labels or [])
    algorithm = model.algorithm if model is not None else _slug(dataset)
    plan = _plan(catalog, dataset, pools=pools, include_field=include_field, algorithm=algorithm)
    free = len(plan.candidates) - len(plan.queued)
    if budget > free:
        extra = (
            f", incl. {len(plan.field_ids)} field hard cases of {algorithm}"
            if plan.field_ids
            else ""
        )
        raise BudgetExceedsPool(
            f"budget {budget} is larger than the pool: {free} unlabeled samples not yet queued "
            f"for annotation in pools {', '.join(plan.pools)} of dataset {plan.dataset!r} "
            f"({len(plan.candidates)} unlabeled, {len(plan.queued)} already queued{extra})",
            field="budget",
        )
    return MiningPlan(
        dataset=plan.dataset,
        budget=budget,
        strategy=strategy,
        model_key=f"{model.algorithm}@{model.version}" if model is not None else None,
        algorithm=algorithm,
        pools=plan.pools,
        pool_size=free,
        field_pool=len(plan.field_ids),
        already_queued=len(plan.queued),
        labels=ds_labels,
        plan=plan,
        model=model,
    )


# ---------------------------------------------------------------- the round


def mine_dataset(
    catalog: Catalog,
    dataset: str,
    *,
    model_version: str | None = None,
    budget: int,
    strategy: str = "auto",
    pools: Sequence[str] | None = None,
    include_field: bool = True,
    seed: int = 0,
    task_id: str | None = None,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
    created_by: str = "",
) -> MiningOutcome:
    """One mining round on ``dataset`` (see the module docstring).

    ``model_version``: ``algorithm@version`` or a version of the dataset's
    algorithm; default the newest published model of the dataset, else its
    newest candidate (no model at all: cold-start mining without pre-labels).
    ``pools``: the dataset's pools to mine (default ``main`` and
    ``field_hard``); ``include_field`` adds the field hard cases of the
    model's algorithm. ``task_id``: run under an existing mining task (a job)
    and resume its checkpoint; ``check`` is called between batches and may
    raise to stop.
    """
    from cloud.catalog.annotation import AnnotationTaskSpec, PreLabel, create_annotation_task
    from cloud.flywheel._pipeline import dataset_backbone, embed_samples, recorded_task

    if task_id is not None:  # a re-run of a job that already opened its task
        with catalog.transaction() as s:
            done_id = _existing_annotation_task(s, task_id)
            if done_id is not None:
                return _recorded_outcome(s, task_id, done_id)

    prep = prepare_mining(
        catalog,
        dataset,
        model_version=model_version,
        budget=budget,
        strategy=strategy,
        pools=pools,
        include_field=include_field,
    )
    plan, model, model_key, ds_labels = prep.plan, prep.model, prep.model_key, prep.labels
    budget, free = prep.budget, prep.pool_size

    params = {
        "dataset": plan.dataset,
        "model": model_key,
        "budget": budget,
        "strategy": strategy,
        "pools": plan.pools,
        "include_field": include_field,
        "seed": seed,
    }
    with recorded_task(
        catalog,
        TaskKind.MINING,
        title=f"mine {budget} of {plan.dataset}",
        dataset_id=plan.dataset_id,
        params=params,
        created_by=created_by,
        task_id=task_id,
        progress=progress,
    ) as (tid, report):
        if plan.field_to_copy:
            from cloud.ingest import FIELD_POOL

            catalog.add_samples(
                plan.dataset_id,
                [SampleIn(id=sid) for sid in plan.field_to_copy],  # rows exist: provenance kept
                pool=FIELD_POOL,
                task_id=tid,
            )
            report(0.02, f"{len(plan.field_to_copy)} field hard cases joined pool {FIELD_POOL}")

        rows = plan.candidates + plan.labeled  # pool order: candidates, then the labeled
        workdir = catalog.settings.data_dir / "mining" / tid
        key = {
            "rows": hashlib.sha256("\n".join(rows).encode()).hexdigest(),
            "model": model_key,
            "onnx": (model.artifacts or {}).get("onnx") if model is not None else None,
        }
        _fresh_workdir(workdir, key)

        backbone = dataset_backbone(catalog, plan.dataset)

        def embedded(f: float, m: str) -> None:
            report(0.05 + 0.35 * f, "embeddings: " + m)
            if check:
                check()  # embeddings are kept batch by batch: a re-run goes on from here

        store = embed_samples(catalog, backbone, rows, progress=embedded)
        if check:
            check()
        emb = _pool_matrix(store, rows, workdir / "pool.f32")
        probs = None
        if model is not None:
            probs = _score_pool(
                catalog,
                model,
                rows,
                workdir,
                progress=lambda f, m: report(0.4 + 0.45 * f, m),
                check=check,
            )
        classes = list(model.labels) if model is not None else ds_labels
        n_cand = len(plan.candidates)
        labeled_pos = list(range(n_cand, len(rows)))
        labels = None
        if plan.labeled and all(lab in classes for lab in plan.labeled_labels):
            labels = [classes.index(lab) for lab in plan.labeled_labels]  # type: ignore[arg-type]
        excluded = queued_positions(plan.candidates, plan.queued)
        report(0.86, f"selecting {budget} of {free} with {strategy}")
        kw: dict[str, Any] = {
            "budget": budget,
            "strategy": strategy,
            "seed": seed,
            "labeled": labeled_pos,
            "labels": labels,
            "class_names": classes,
            "excluded": excluded,
        }
        for attempt in range(2):
            try:
                run = MiningRun(
                    workdir,
                    emb,
                    probs=probs,
                    probs_key=None if probs is None else key["onnx"] or "",
                    **kw,
                )
                sel = run.run()
                break
            except RunConflict:
                if attempt:
                    raise
                for name in ("run.json", "selection.json"):
                    (workdir / name).unlink(missing_ok=True)
        if check:
            check()

        with catalog.transaction() as s:
            # anything queued meanwhile by another task is dropped, never queued twice
            queued_now = queued_sample_ids(s, plan.dataset_id)
            batch = annotation_batch(sel, rows, queued_now, probs, classes)
            if not batch.sample_ids:
                raise BudgetExceedsPool(
                    "every selected sample was queued by another task meanwhile; run again",
                    field="budget",
                )
            field_set = set(plan.field_ids)
            prov = {
                sm.id: sm
                for chunk in _chunks(sorted(field_set & set(batch.sample_ids)))
                for sm in s.scalars(select(Sample).where(Sample.id.in_(chunk)))
            }
            reasons: dict[str, str] = {}
            for sid, r in zip(batch.sample_ids, batch.reasons, strict=True):
                if sid in field_set:
                    sm = prov.get(sid)
                    src = f"field hard case from {sm.device or 'a device'}" if sm else "field case"
                    if sm is not None and sm.reason:
                        src += f" ({sm.selector + ': ' if sm.selector else ''}{sm.reason})"
                    r = f"{r} · {src}"
                reasons[sid] = r[:2000]
            task_labels = ds_labels + [c for c in classes if c not in ds_labels]
            pre: dict[str, PreLabel] = {}
            for sid, p in zip(batch.sample_ids, batch.prelabels, strict=True):
                if p is not None:
                    pre[sid] = PreLabel(
                        label=p.label, score=p.score, model_version=(model_key or "")[:64]
                    )
            ann_task = create_annotation_task(
                catalog,
                s,
                AnnotationTaskSpec(
                    dataset=plan.dataset,
                    title=(
                        f"mined {len(batch.sample_ids)} of {plan.dataset} ({strategy}"
                        + (f", {model_key}" if model_key else "")
                        + ")"
                    )[:500],
                    labels=task_labels or None,
                    sample_ids=batch.sample_ids,
                    prelabels=pre,
                    use_model_prelabels=model is None,
                    reasons=reasons,
                    limit=min(100_000, max(1, len(batch.sample_ids))),
                ),
                created_by=created_by or "mining",
            )
            edges = [
                ("input", "dataset", str(plan.dataset_id), ("pools=" + ",".join(plan.pools))[:64]),
                ("input", "embedding", backbone.name, "backbone"),
                ("output", "task", ann_task.id, "annotation"),
            ]
            latest = s.scalar(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == plan.dataset_id)
                .order_by(DatasetVersion.number.desc())
                .limit(1)
            )
            if latest is not None:
                edges.append(
                    (
                        "input",
                        "dataset_version",
                        str(latest.id),
                        f"{plan.dataset}@{latest.number}"[:64],
                    )
                )
            if model is not None:
                edges.append(("input", "model", str(model.id), (model_key or "")[:64]))
            if plan.field_dataset_id is not None and plan.field_ids:
                edges.append(
                    ("input", "dataset", str(plan.field_dataset_id), "field_hard"),
                )
            for direction, entity, eid, role in edges:
                s.add(
                    LineageEdge(
                        task_id=tid, direction=direction, entity=entity, entity_id=eid, role=role
                    )
                )
            items = [
                MinedItem(
                    sample_id=sid,
                    pool=plan.member_pool.get(sid, "field_hard"),
                    from_field=sid in field_set,
                    reason=reasons[sid],
                    prelabel=p.label if p else None,
                    prelabel_score=p.score if p else None,
                )
                for sid, p in zip(batch.sample_ids, batch.prelabels, strict=True)
            ]
            outcome = MiningOutcome(
                task_id=tid,
                annotation_task_id=ann_task.id,
                dataset=plan.dataset,
                model=model_key,
                strategy=strategy,
                budget=budget,
                selected=len(items),
                from_field=sum(it.from_field for it in items),
                pool_size=free,
                field_pool=len(plan.field_ids),
                already_queued=len(plan.queued),
                labeled=len(plan.labeled),
                reason_kinds=dict(Counter(_reason_kind(r) for r in batch.reasons).most_common()),
                items=items,
            )
            t = s.get(Task, tid)
            t.result = outcome.model_dump(mode="json")
        shutil.rmtree(workdir, ignore_errors=True)  # the catalog holds the result now
        report(1.0, f"annotation task {ann_task.id}: {outcome.selected} samples")
        return outcome


__all__ = [
    "DEFAULT_POOLS",
    "MinedItem",
    "MiningOutcome",
    "MiningPlan",
    "dataset_models",
    "mine_dataset",
    "prepare_mining",
    "queued_sample_ids",
    "resolve_model",
]
