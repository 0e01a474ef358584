"""The flywheel on catalog datasets: pretrain, embed, train + evaluate +
export + register, with lineage. Each step records its work on a catalog Task.

A training run writes the Model row, its artifacts and lineage edges in one
transaction at the very end, so a run killed midway leaves no half-registered
model (re-running it is safe).
"""

from __future__ import annotations

import json
import re
import shutil
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
from cloud.flywheel._detect import DetectConfig
from cloud.flywheel._evaluate import (
    DetectMetrics,
    GateDecision,
    Metrics,
    evaluate,
    gate,
    plot_confusion,
)
from cloud.flywheel._export import export_onnx, parity_check, preprocess_contract
from cloud.flywheel._ray import decode_rgb, embed_dataset
from cloud.flywheel._train import TrainConfig, check_labels, train_classifier

Progress = Callable[[float, str], None]


def load_images(
    catalog: Catalog, sample_ids: Sequence[str], size: int = DEFAULT_SIZE
) -> np.ndarray:
    """uint8 RGB [N, size, size, 3] of the samples' blobs."""
    out = np.empty((len(sample_ids), size, size, 3), np.uint8)
    for i, sid in enumerate(sample_ids):
        out[i] = decode_rgb(catalog.blobs.get(sid), size, sid)
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
    """Compute embeddings for the samples that have none yet (incremental),
    in-process or on Ray by size (see :func:`cloud.flywheel._ray.embed_dataset`)."""
    return embed_dataset(catalog, backbone, sample_ids, batch=batch, progress=progress)[0]


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
        _, embed_run = embed_dataset(
            catalog, backbone, ids, progress=lambda f, m: report(0.8 + 0.2 * f, m)
        )
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
            t.result = {
                "backbone": backbone.name,
                "checkpoint": ckpt,
                "losses": losses,
                "embedding": embed_run.model_dump(),
            }
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
    task: Literal["classify", "detect"] = "classify"
    mode: str
    metrics: Metrics | DetectMetrics
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


def _onnx_path(catalog: Catalog, onnx_sha: str) -> Path:
    """Local file of a stored ONNX model (the scoring runtimes read files)."""
    path = catalog.blobs.path(onnx_sha) if hasattr(catalog.blobs, "path") else None
    if path is None:
        raise NotFound("published model's ONNX is not on this blob store")
    return path


@contextmanager
def _scratch(catalog: Catalog, tid: str) -> Iterator[Path]:
    """A training task's scratch folder (export, plots), removed when done."""
    tmp = catalog.tmp_dir / f"train-{tid}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_parity(parity: Any) -> None:
    if not parity.ok:
        raise InvalidInput(
            f"ONNX parity check failed: max |diff| {parity.max_abs_diff:.2e} > {parity.atol}"
        )


def _onnx_probs(catalog: Catalog, onnx_sha: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from cloud.flywheel._backbones import normalize

    sess = ort.InferenceSession(
        str(_onnx_path(catalog, onnx_sha)), providers=["CPUExecutionProvider"]
    )
    logits = sess.run(None, {"input": normalize(images)})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def train_config(task: str, knobs: dict[str, Any]) -> TrainConfig | DetectConfig:
    """The config of a ``task`` (classify: TrainConfig, detect: DetectConfig)
    from its knobs; InvalidInput names the first bad one as ``config.<knob>``."""
    from pydantic import ValidationError

    cls: type[TrainConfig] | type[DetectConfig] = {
        "classify": TrainConfig,
        "detect": DetectConfig,
    }.get(task)  # type: ignore[assignment]
    if cls is None:
        raise InvalidInput(f"task must be classify or detect, not {task!r}", field="task")
    try:
        return cls(**knobs)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in ("config", *first["loc"]))
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def _check_published_task(catalog: Catalog, algorithm: str, task: str) -> Model | None:
    current = published_model(catalog, algorithm)
    if current is not None and (current.task or "classify") != task:
        raise InvalidInput(
            f"{algorithm} is published as a {current.task} model; a {task} model needs "
            "another algorithm id",
            field="algorithm",
        )
    return current


def _register(
    s: Any, row: Model, tid: str, ver: Any, ds: Any, backbone: str, onnx_sha: str
) -> None:
    """Add a trained model's row with its lineage: dataset version and backbone in,
    model and ONNX blob out, all on the training task."""
    s.add(row)
    s.flush()
    for direction, entity, eid, role in [
        ("input", "dataset_version", str(ver.id), f"{ds.name}@{ver.number}"),
        ("input", "embedding", backbone, "backbone"),
        ("output", "model", str(row.id), f"{row.algorithm}@{row.version}"),
        ("output", "blob", onnx_sha, "onnx"),
    ]:
        s.add(
            LineageEdge(task_id=tid, direction=direction, entity=entity, entity_id=eid, role=role)
        )


def train_dataset(
    catalog: Catalog,
    dataset: str,
    *,
    task: Literal["classify", "detect"] = "classify",
    algorithm: str | None = None,
    backbone_file: Path | None = None,
    config: TrainConfig | DetectConfig | None = None,
    created_by: str = "",
    task_id: str | None = None,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Snapshot the dataset, train on its train split, evaluate on the frozen
    test split against the published version, export a parity-checked ONNX,
    and register the candidate model with full lineage.

    ``task="detect"`` trains a box detector (see :mod:`cloud.flywheel._detect`)
    on the box annotations and takes a :class:`DetectConfig`."""
    ds = catalog.get_dataset(dataset)
    algorithm = _slug(algorithm or ds.name)
    if task == "detect":
        if isinstance(config, TrainConfig):
            raise InvalidInput("detection takes a DetectConfig, not a TrainConfig", field="config")
        return _train_detect(
            catalog,
            ds,
            algorithm,
            backbone_file=backbone_file,
            config=config or DetectConfig(),
            created_by=created_by,
            task_id=task_id,
            progress=progress,
        )
    if isinstance(config, DetectConfig):
        raise InvalidInput("classification takes a TrainConfig, not a DetectConfig", field="config")
    config = config or TrainConfig()
    items = [it for it in catalog.iter_items(ds.id) if it.label is not None or it.boxes]
    cls_items = [it for it in items if it.kind == AnnotationKind.CLASSIFICATION and it.label]
    check_labels([it.label for it in cls_items], ds.labels)  # fail before any compute
    _check_published_task(catalog, algorithm, "classify")
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
        with _scratch(catalog, tid) as tmp:
            onnx_path = export_onnx(model, tmp / "model.onnx")
            parity = parity_check(model, onnx_path, x_test[:32])
            _require_parity(parity)
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
                _register(s, row, tid, ver, ds, backbone.name, onnx_sha)
                s.get(Task, tid).result = {
                    "model_id": row.id,
                    "algorithm": algorithm,
                    "version": version,
                    "accuracy": metrics.accuracy,
                    "gate": decision.model_dump(),
                }
                model_id = row.id
        report(1.0, f"registered {algorithm} {version} (candidate)")
        return TrainOutcome(
            task_id=tid,
            model_id=model_id,
            algorithm=algorithm,
            version=version,
            task="classify",
            mode=model.mode,
            metrics=metrics,
            gate=decision,
            parity_max_abs_diff=parity.max_abs_diff,
            onnx_sha256=onnx_sha,
            dataset_version=ver.number,
        )


# ---------------------------------------------------------------------------
# Detection: train + evaluate (mAP@0.5) + export + register
# ---------------------------------------------------------------------------


def _box_items(catalog: Catalog, items: Sequence[Any]) -> list[tuple[str, Any, int, int]]:
    """(sample id, boxes, width, height) of box annotations; sizes the catalog
    does not know are read from the image."""
    import cv2

    out = []
    for it in items:
        w, h = it.width, it.height
        if not (w and h):
            img = cv2.imdecode(np.frombuffer(catalog.blobs.get(it.sample_id), np.uint8), 1)
            if img is None:
                raise InvalidInput(
                    f"sample {it.sample_id[:12]} does not decode as an image", field="sample"
                )
            h, w = img.shape[:2]
        out.append((it.sample_id, it.boxes or [], int(w), int(h)))
    return out


def _train_detect(
    catalog: Catalog,
    ds: Any,
    algorithm: str,
    *,
    backbone_file: Path | None,
    config: DetectConfig,
    created_by: str,
    task_id: str | None,
    progress: Progress | None,
) -> TrainOutcome:
    from cloud.flywheel._detect import (
        check_boxes,
        decode_rows,
        detector_parity_check,
        export_detector_onnx,
        feature_extractor,
        onnx_rows,
        postprocess_contract,
        train_detector,
    )
    from cloud.flywheel._evaluate import evaluate_detections, plot_pr_curves

    boxed = [it for it in catalog.iter_items(ds.id) if it.kind == AnnotationKind.BOXES]
    if not boxed:
        raise InvalidInput(
            f"dataset {ds.name!r} has no box annotations: detection needs boxes", field="task"
        )
    check_boxes(_box_items(catalog, boxed), ds.labels)  # all before any compute
    current = _check_published_task(catalog, algorithm, "detect")
    backbone = dataset_backbone(catalog, ds.name, backbone_file)
    feature_extractor(backbone)
    pretrained = not backbone.name.startswith("scratch")
    params = {
        "task": "detect",
        "algorithm": algorithm,
        "config": config.model_dump(),
        "backbone": backbone.name,
        "backbone_file": str(backbone_file) if backbone_file else None,
    }
    with recorded_task(
        catalog,
        TaskKind.TRAINING,
        title=f"train detector {algorithm} on {ds.name}",
        dataset_id=ds.id,
        params=params,
        created_by=created_by,
        task_id=task_id,
        progress=progress,
    ) as (tid, report):
        ver = catalog.create_version(ds.id, note=f"training {algorithm}", created_by=created_by)
        items = [
            it for it in catalog.iter_items(ds.id, ver.number) if it.kind == AnnotationKind.BOXES
        ]
        train = [it for it in items if it.split != Split.TEST]
        test = [it for it in items if it.split == Split.TEST]
        y_train = check_boxes(_box_items(catalog, train), ds.labels)
        y_test = check_boxes(_box_items(catalog, test), ds.labels, require=False)
        if not sum(len(t) for t in y_test):
            raise InvalidInput(
                "no boxes in the test split yet: annotate a few more images", field="boxes"
            )
        size = config.input_size
        n_boxes = sum(len(t) for t in y_train)
        report(0.05, f"{len(train)} train images ({n_boxes} boxes) / {len(test)} test")
        x_train = load_images(catalog, [it.sample_id for it in train], size)
        x_test = load_images(catalog, [it.sample_id for it in test], size)
        model = train_detector(
            x_train,
            y_train,
            ds.labels,
            backbone,
            config,
            pretrained=pretrained,
            progress=lambda f, m: report(0.1 + 0.7 * f, m),
        )
        with _scratch(catalog, tid) as tmp:
            onnx_path = export_detector_onnx(model, tmp / "model.onnx")
            parity = detector_parity_check(model, onnx_path, x_test[:16])
            _require_parity(parity)
            # the exported artifact is what is scored, as the published one is
            metrics = evaluate_detections(
                decode_rows(onnx_rows(onnx_path, x_test)), y_test, ds.labels
            )
            baseline = None
            if current is not None and current.artifacts.get("onnx"):
                path = _onnx_path(catalog, current.artifacts["onnx"])
                bsize = int(current.params["preprocess"]["resize"][0])
                xb = (
                    x_test
                    if bsize == size
                    else load_images(catalog, [it.sample_id for it in test], bsize)
                )
                baseline = evaluate_detections(decode_rows(onnx_rows(path, xb)), y_test, ds.labels)
            decision = gate(metrics, baseline, metric="map50")
            report(0.9, f"mAP@0.5 {metrics.map50:.3f}; gate: {decision.reason}")
            onnx_sha = catalog.blobs.put(onnx_path)
            pr_sha = catalog.blobs.put(plot_pr_curves(metrics, tmp / "pr.png"))
            version = _next_version(catalog, algorithm)
            with catalog.transaction() as s:
                row = Model(
                    algorithm=algorithm,
                    version=version,
                    task="detect",
                    status=ModelStatus.CANDIDATE,
                    dataset_version_id=ver.id,
                    task_id=tid,
                    backbone=model.backbone_name,
                    labels=list(ds.labels),
                    params={
                        **params,
                        "config": model.config,
                        "mode": model.mode,
                        "train_labels": len(train),
                        "train_boxes": n_boxes,
                        "history": model.history[-1:] if model.history else [],
                        "preprocess": preprocess_contract(size),
                        "postprocess": postprocess_contract(config),
                        "baseline_version": current.version if current else None,
                    },
                    metrics={
                        "map50": metrics.map50,
                        "test_n": metrics.n,
                        "test_boxes": metrics.boxes,
                        "detail": metrics.model_dump(),
                        "gate": decision.model_dump(),
                        "parity": parity.model_dump(),
                    },
                    artifacts={"onnx": onnx_sha, "pr_png": pr_sha},
                )
                _register(s, row, tid, ver, ds, backbone.name, onnx_sha)
                s.get(Task, tid).result = {
                    "model_id": row.id,
                    "algorithm": algorithm,
                    "version": version,
                    "task": "detect",
                    "map50": metrics.map50,
                    "config": model.config,
                    "gate": decision.model_dump(),
                }
                model_id = row.id
        report(1.0, f"registered {algorithm} {version} (candidate detector)")
        return TrainOutcome(
            task_id=tid,
            model_id=model_id,
            algorithm=algorithm,
            version=version,
            task="detect",
            mode=model.mode,
            metrics=metrics,
            gate=decision,
            parity_max_abs_diff=parity.max_abs_diff,
            onnx_sha256=onnx_sha,
            dataset_version=ver.number,
        )
