"""The flywheel on catalog datasets: pretrain, embed, train + evaluate +
export + register, with lineage. Each step records its work on a catalog Task.

A training run writes the Model row, its artifacts and lineage edges in one
transaction at the very end, so a run killed midway leaves no half-registered
model (re-running it is safe).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select

from cloud.catalog import Catalog
from cloud.catalog.models import (
    AnnotationKind,
    LineageEdge,
    Model,
    ModelStatus,
    Split,
    Task,
    TaskKind,
    TaskStatus,
    utcnow,
)
from cloud.errors import InvalidInput, NotFound
from cloud.flywheel._backbones import (
    DEFAULT_SIZE,
    Backbone,
    TorchBackbone,
    load_backbone,
    pretrain_simclr,
    scratch_backbone,
)
from cloud.flywheel._evaluate import GateDecision, Metrics, evaluate, gate, plot_confusion
from cloud.flywheel._export import export_onnx, parity_check, preprocess_contract
from cloud.flywheel._train import TrainConfig, check_labels, train_classifier

Progress = Callable[[float, str], None]


def load_images(
    catalog: Catalog, sample_ids: Sequence[str], size: int = DEFAULT_SIZE
) -> np.ndarray:
    """uint8 RGB [N, size, size, 3] of the samples' blobs."""
    import cv2

    out = np.empty((len(sample_ids), size, size, 3), np.uint8)
    for i, sid in enumerate(sample_ids):
        data = np.frombuffer(catalog.blobs.get(sid), np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidInput(f"sample {sid[:12]} does not decode as an image", field="sample")
        out[i] = cv2.cvtColor(
            cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
        )
    return out


# ---------------------------------------------------------------------------
# Embeddings: append-only float32 rows + ids, memory-mapped, per backbone
# ---------------------------------------------------------------------------


class EmbeddingStore:
    """Embeddings of samples by one backbone, under ``root``.

    ``vectors.f32`` holds rows appended in the order of ``ids.txt``; rows are
    written before ids, so a crash leaves at most unreferenced trailing rows.
    """

    def __init__(self, root: Path, dim: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "meta.json"
        if meta.exists():
            stored = json.loads(meta.read_text())["dim"]
            if stored != dim:
                raise InvalidInput(f"embedding store {root} has dim {stored}, backbone gives {dim}")
        else:
            meta.write_text(json.dumps({"dim": dim}))
        self.dim = dim
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        ids_file = self.root / "ids.txt"
        if ids_file.exists():
            rows = (self.root / "vectors.f32").stat().st_size // (4 * dim)
            self._ids = ids_file.read_text().split()[:rows]
            self._index = {s: i for i, s in enumerate(self._ids)}

    def __len__(self) -> int:
        return len(self._ids)

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [s for s in ids if s not in self._index]

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        assert vectors.shape == (len(ids), self.dim)
        with open(self.root / "vectors.f32", "ab") as f:
            f.seek(len(self._ids) * 4 * self.dim)
            f.truncate()
            f.write(vectors.tobytes())
        with open(self.root / "ids.txt", "a") as f:
            f.write("".join(f"{s}\n" for s in ids))
        for s in ids:
            self._index[s] = len(self._ids)
            self._ids.append(s)

    def matrix(self) -> np.ndarray:
        if not self._ids:
            return np.zeros((0, self.dim), np.float32)
        mm = np.memmap(self.root / "vectors.f32", np.float32, "r")
        return mm[: len(self._ids) * self.dim].reshape(len(self._ids), self.dim)

    def get(self, ids: Sequence[str]) -> np.ndarray:
        m = self.matrix()
        missing = self.missing(ids)
        if missing:
            raise NotFound(f"{len(missing)} samples have no embedding yet (e.g. {missing[0][:12]})")
        return np.asarray(m[[self._index[s] for s in ids]])

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def neighbours(
        self, sample_id: str, k: int = 10, among: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` most similar samples (cosine) to ``sample_id``."""
        import faiss

        if sample_id not in self._index:
            raise NotFound(f"sample {sample_id[:12]} has no embedding yet", field="sample")
        ids = list(among) if among is not None else self._ids
        ids = [s for s in ids if s in self._index]
        vecs = np.array(self.get(ids), np.float32)
        faiss.normalize_L2(vecs)
        index = faiss.IndexFlatIP(self.dim)
        index.add(vecs)
        q = np.array(self.get([sample_id]), np.float32)
        faiss.normalize_L2(q)
        scores, idx = index.search(q, min(k + 1, len(ids)))
        out = [(ids[i], float(sc)) for sc, i in zip(scores[0], idx[0], strict=True) if i >= 0]
        return [(s, sc) for s, sc in out if s != sample_id][:k]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def backbone_checkpoint(catalog: Catalog, dataset: str) -> Path:
    return catalog.settings.data_dir / "backbones" / f"{_slug(dataset)}.ckpt"


def embedding_store(catalog: Catalog, backbone: Backbone) -> EmbeddingStore:
    return EmbeddingStore(
        catalog.settings.data_dir / "embeddings" / _slug(backbone.name), backbone.dim
    )


def dataset_backbone(catalog: Catalog, dataset: str, backbone_file: Path | None = None) -> Backbone:
    """The backbone a dataset trains on: a given file, else its pretraining
    checkpoint, else a seeded from-scratch encoder."""
    if backbone_file is not None:
        return load_backbone(backbone_file)
    ckpt = backbone_checkpoint(catalog, dataset)
    if ckpt.exists():
        return load_backbone(ckpt)
    return scratch_backbone()


def embed_samples(
    catalog: Catalog,
    backbone: Backbone,
    sample_ids: Sequence[str],
    *,
    batch: int = 256,
    progress: Progress | None = None,
) -> EmbeddingStore:
    """Compute embeddings for the samples that have none yet (incremental)."""
    store = embedding_store(catalog, backbone)
    todo = store.missing(list(dict.fromkeys(sample_ids)))
    for i in range(0, len(todo), batch):
        ids = todo[i : i + batch]
        store.add(ids, backbone.embed(load_images(catalog, ids, backbone.input_size)))
        if progress:
            progress(min(1.0, (i + len(ids)) / len(todo)), f"embedded {i + len(ids)}/{len(todo)}")
    return store


# ---------------------------------------------------------------------------
# Task records
# ---------------------------------------------------------------------------


@contextmanager
def recorded_task(
    catalog: Catalog,
    kind: TaskKind,
    *,
    title: str,
    dataset_id: int | None,
    params: dict[str, Any],
    created_by: str,
    task_id: str | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[str, Progress]]:
    """Run work under a Task row: an existing one (from a job worker), or a
    new one created running and finished here (a CLI run). Yields the task id
    and a reporter that updates the task (when owned) and calls ``progress``."""
    own = task_id is None
    with catalog.transaction() as s:
        if own:
            t = Task(
                kind=kind,
                status=TaskStatus.RUNNING,
                title=title,
                dataset_id=dataset_id,
                params=params,
                created_by=created_by,
                started_at=utcnow(),
                attempts=1,
            )
            s.add(t)
            s.flush()
            task_id = t.id
        elif s.get(Task, task_id) is None:
            raise NotFound(f"no task {task_id}", field="task_id")
    assert task_id is not None

    def report(fraction: float, message: str) -> None:
        if own:
            with catalog.transaction() as s:
                t = s.get(Task, task_id)
                t.progress, t.message = float(fraction), message
        if progress:
            progress(fraction, message)

    try:
        yield task_id, report
    except BaseException as e:
        if own:
            with catalog.transaction() as s:
                t = s.get(Task, task_id)
                t.status, t.error, t.finished_at = TaskStatus.FAILED, str(e)[:2000], utcnow()
        raise
    if own:
        with catalog.transaction() as s:
            t = s.get(Task, task_id)
            t.status, t.progress, t.finished_at = TaskStatus.SUCCEEDED, 1.0, utcnow()


# ---------------------------------------------------------------------------
# Pretrain
# ---------------------------------------------------------------------------


class PretrainOutcome(BaseModel):
    task_id: str
    backbone: str
    checkpoint: str | None
    epochs: int
    losses: list[float]
    samples: int


def pretrain_dataset(
    catalog: Catalog,
    dataset: str,
    *,
    epochs: int = 20,
    backbone_file: Path | None = None,
    max_images: int = 5000,
    seed: int = 0,
    created_by: str = "",
    task_id: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PretrainOutcome:
    """Self-supervised pretraining on the dataset's pool (or adopting a given
    pretrained backbone file), then embeddings for every sample."""
    ds = catalog.get_dataset(dataset)
    ids = [it.sample_id for it in catalog.iter_items(ds.id)]
    if not ids:
        raise InvalidInput(f"dataset {ds.name!r} has no samples to pretrain on", field="dataset")
    params = {
        "epochs": epochs,
        "backbone_file": str(backbone_file) if backbone_file else None,
        "max_images": max_images,
        "seed": seed,
    }
    with recorded_task(
        catalog,
        TaskKind.PRETRAINING,
        title=f"pretrain {ds.name}",
        dataset_id=ds.id,
        params=params,
        created_by=created_by,
        task_id=task_id,
        progress=progress,
    ) as (tid, report):
        if backbone_file is not None:
            backbone = load_backbone(backbone_file)  # validated before any compute
            ckpt, losses, done = None, [], 0
        else:
            rng = np.random.default_rng(seed)
            pick = sorted(rng.choice(len(ids), min(max_images, len(ids)), replace=False))
            images = load_images(catalog, [ids[i] for i in pick])
            ckpt_path = backbone_checkpoint(catalog, ds.name)
            res = pretrain_simclr(
                images,
                ckpt_path,
                epochs=epochs,
                seed=seed,
                progress=lambda f, m: report(0.8 * f, m),
                should_stop=should_stop,
            )
            backbone, ckpt, losses, done = (
                load_backbone(ckpt_path),
                str(ckpt_path),
                res.losses,
                res.epochs,
            )
        embed_samples(catalog, backbone, ids, progress=lambda f, m: report(0.8 + 0.2 * f, m))
        with catalog.transaction() as s:
            s.add(
                LineageEdge(
                    task_id=tid,
                    direction="input",
                    entity="dataset",
                    entity_id=str(ds.id),
                    role=ds.name,
                )
            )
            s.add(
                LineageEdge(
                    task_id=tid,
                    direction="output",
                    entity="embedding",
                    entity_id=backbone.name,
                    role="backbone",
                )
            )
            t = s.get(Task, tid)
            t.result = {"backbone": backbone.name, "checkpoint": ckpt, "losses": losses}
        return PretrainOutcome(
            task_id=tid,
            backbone=backbone.name,
            checkpoint=ckpt,
            epochs=done,
            losses=losses,
            samples=len(ids),
        )


# ---------------------------------------------------------------------------
# Train + evaluate + export + register
# ---------------------------------------------------------------------------


class TrainOutcome(BaseModel):
    task_id: str
    model_id: int
    algorithm: str
    version: str
    mode: str
    metrics: Metrics
    gate: GateDecision
    parity_max_abs_diff: float
    onnx_sha256: str
    dataset_version: int


def _next_version(catalog: Catalog, algorithm: str) -> str:
    from edge_agent.protocol import semver_key

    with catalog.transaction() as s:
        versions = list(s.scalars(select(Model.version).where(Model.algorithm == algorithm)))
    if not versions:
        return "1.0.0"
    major, minor, *_ = semver_key(max(versions, key=semver_key))
    return f"{major}.{minor + 1}.0"


def published_model(catalog: Catalog, algorithm: str) -> Model | None:
    from edge_agent.protocol import semver_key

    with catalog.transaction() as s:
        rows = list(
            s.scalars(
                select(Model).where(
                    Model.algorithm == algorithm, Model.status == ModelStatus.PUBLISHED
                )
            )
        )
    return max(rows, key=lambda m: semver_key(m.version)) if rows else None


def _onnx_probs(catalog: Catalog, onnx_sha: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from cloud.flywheel._backbones import normalize

    path = catalog.blobs.path(onnx_sha) if hasattr(catalog.blobs, "path") else None
    if path is None:
        raise NotFound("published model's ONNX is not on this blob store")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": normalize(images)})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def train_dataset(
    catalog: Catalog,
    dataset: str,
    *,
    task: Literal["classify", "detect"] = "classify",
    algorithm: str | None = None,
    backbone_file: Path | None = None,
    config: TrainConfig | None = None,
    created_by: str = "",
    task_id: str | None = None,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Snapshot the dataset, train on its train split, evaluate on the frozen
    test split against the published version, export a parity-checked ONNX,
    and register the candidate model with full lineage."""
    config = config or TrainConfig()
    ds = catalog.get_dataset(dataset)
    algorithm = _slug(algorithm or ds.name)
    items = [it for it in catalog.iter_items(ds.id) if it.label is not None or it.boxes]
    if task == "detect":
        if not any(it.kind == AnnotationKind.BOXES for it in items):
            raise InvalidInput(
                f"dataset {ds.name!r} has no box annotations: detection needs boxes", field="task"
            )
        raise InvalidInput(
            "detection training is not available yet: use --task classify", field="task"
        )
    cls_items = [it for it in items if it.kind == AnnotationKind.CLASSIFICATION and it.label]
    check_labels([it.label for it in cls_items], ds.labels)  # fail before any compute
    backbone = dataset_backbone(catalog, ds.name, backbone_file)
    params = {
        "task": task,
        "algorithm": algorithm,
        "config": config.model_dump(),
        "backbone": backbone.name,
        "backbone_file": str(backbone_file) if backbone_file else None,
    }
    with recorded_task(
        catalog,
        TaskKind.TRAINING,
        title=f"train {algorithm} on {ds.name}",
        dataset_id=ds.id,
        params=params,
        created_by=created_by,
        task_id=task_id,
        progress=progress,
    ) as (tid, report):
        ver = catalog.create_version(ds.id, note=f"training {algorithm}", created_by=created_by)
        items = [
            it
            for it in catalog.iter_items(ds.id, ver.number)
            if it.kind == AnnotationKind.CLASSIFICATION and it.label
        ]
        train = [it for it in items if it.split != Split.TEST]
        test = [it for it in items if it.split == Split.TEST]
        y_train = check_labels([it.label for it in train], ds.labels)
        if not test:
            raise InvalidInput(
                "no labeled samples in the test split yet: label a few more", field="labels"
            )
        report(0.05, f"{len(train)} train / {len(test)} test labels, backbone {backbone.name}")
        x_train = load_images(catalog, [it.sample_id for it in train], backbone.input_size)
        x_test = load_images(catalog, [it.sample_id for it in test], backbone.input_size)
        emb = None
        if isinstance(backbone, TorchBackbone):
            emb = embed_samples(catalog, backbone, [it.sample_id for it in train]).get(
                [it.sample_id for it in train]
            )
        model = train_classifier(
            x_train,
            [it.label for it in train],
            ds.labels,
            backbone,
            config,
            embeddings=emb,
            progress=lambda f, m: report(0.1 + 0.7 * f, m),
        )
        del y_train
        y_test = np.array([ds.labels.index(it.label) for it in test])
        metrics = evaluate(model.predict_proba(x_test), y_test, ds.labels)
        current = published_model(catalog, algorithm)
        baseline = None
        if current is not None and current.artifacts.get("onnx"):
            baseline = evaluate(
                _onnx_probs(catalog, current.artifacts["onnx"], x_test), y_test, ds.labels
            )
        decision = gate(metrics, baseline)
        report(0.85, f"accuracy {metrics.accuracy:.3f}; gate: {decision.reason}")
        tmp = catalog.tmp_dir / f"train-{tid}"
        tmp.mkdir(parents=True, exist_ok=True)
        onnx_path = export_onnx(model, tmp / "model.onnx")
        parity = parity_check(model, onnx_path, x_test[:32])
        if not parity.ok:
            raise InvalidInput(
                f"ONNX parity check failed: max |diff| {parity.max_abs_diff:.2e} > {parity.atol}"
            )
        onnx_sha = catalog.blobs.put(onnx_path)
        cm_sha = catalog.blobs.put(plot_confusion(metrics, tmp / "confusion.png"))
        version = _next_version(catalog, algorithm)
        with catalog.transaction() as s:
            row = Model(
                algorithm=algorithm,
                version=version,
                task=task,
                status=ModelStatus.CANDIDATE,
                dataset_version_id=ver.id,
                task_id=tid,
                backbone=backbone.name,
                labels=list(ds.labels),
                params={
                    **params,
                    "mode": model.mode,
                    "train_labels": len(train),
                    "preprocess": preprocess_contract(model.input_size),
                    "baseline_version": current.version if current else None,
                },
                metrics={
                    "accuracy": metrics.accuracy,
                    "balanced_accuracy": metrics.balanced_accuracy,
                    "ece": metrics.ece,
                    "test_n": metrics.n,
                    "detail": metrics.model_dump(),
                    "gate": decision.model_dump(),
                    "parity": parity.model_dump(),
                },
                artifacts={"onnx": onnx_sha, "confusion_png": cm_sha},
            )
            s.add(row)
            s.flush()
            for direction, entity, eid, role in [
                ("input", "dataset_version", str(ver.id), f"{ds.name}@{ver.number}"),
                ("input", "embedding", backbone.name, "backbone"),
                ("output", "model", str(row.id), f"{algorithm}@{version}"),
                ("output", "blob", onnx_sha, "onnx"),
            ]:
                s.add(
                    LineageEdge(
                        task_id=tid, direction=direction, entity=entity, entity_id=eid, role=role
                    )
                )
            t = s.get(Task, tid)
            t.result = {
                "model_id": row.id,
                "algorithm": algorithm,
                "version": version,
                "accuracy": metrics.accuracy,
                "gate": decision.model_dump(),
            }
            model_id = row.id
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        report(1.0, f"registered {algorithm} {version} (candidate)")
        return TrainOutcome(
            task_id=tid,
            model_id=model_id,
            algorithm=algorithm,
            version=version,
            mode=model.mode,
            metrics=metrics,
            gate=decision,
            parity_max_abs_diff=parity.max_abs_diff,
            onnx_sha256=onnx_sha,
            dataset_version=ver.number,
        )
