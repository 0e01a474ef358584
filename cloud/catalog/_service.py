"""The catalog service: datasets, samples, append-only annotations, versions, lineage."""

from __future__ import annotations

import fcntl
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, func, insert, literal, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.blobs import BlobStore, FileBlobStore
from cloud.catalog import db
from cloud.catalog._schemas import (
    AddResult,
    Box,
    DatasetName,
    DatasetStats,
    LabelName,
    Page,
    SampleIn,
    SampleView,
    VersionItem,
)
from cloud.catalog.models import (
    Annotation,
    AnnotationKind,
    AnnotationSource,
    Dataset,
    DatasetSample,
    DatasetVersion,
    DatasetVersionItem,
    LineageEdge,
    Sample,
    Split,
    Task,
    utcnow,
)
from cloud.core.config import Settings, get_settings
from cloud.errors import Conflict, InvalidInput, NotFound

DatasetRef = str | int | Dataset
_BATCH = 500
LINEAGE_DIRECTIONS = ("input", "output")
#: fraction of each label's samples frozen into the test split
TEST_FRACTION = 0.2


def _chunks(items: Sequence[Any], n: int = _BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def insert_ignore(session: Session, model: type, rows: list[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    if not rows:
        return
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - other backends: plain insert (caller pre-filters)
        session.execute(insert(model), rows)
        return
    session.execute(dialect_insert(model).on_conflict_do_nothing(), rows)


def clean_labels(labels: Iterable[str]) -> list[str]:
    out: list[str] = []
    for raw in labels:
        try:
            lab = LabelName(label=raw).label
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise InvalidInput(msg, field="labels") from None
        if lab not in out:
            out.append(lab)
    return out


def _split_key(dataset_id: int, sample_id: str) -> str:
    return hashlib.sha256(f"{dataset_id}:{sample_id}".encode()).hexdigest()


def _stratum(ann: Annotation | None, label: str | None) -> str:
    if label:
        return label
    if ann is not None and ann.boxes:
        c = Counter(b.get("label", "") for b in ann.boxes)
        return "boxes:" + sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return "boxes:"


class Catalog:
    """Facade over the catalog database and the blob store.

    Every method runs in its own transaction unless a ``session`` is passed,
    in which case it joins the caller's transaction (the importer commits a
    whole import at once).
    """

    def __init__(self, engine: Engine, blobs: BlobStore, settings: Settings | None = None) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = db.session_factory(engine)
        self.blobs = blobs
        self.settings = settings or get_settings()
        self._last_added: datetime | None = None

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the data dir's file system (archives, spools)."""
        d = self.settings.data_dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---------------------------------------------------------------- life cycle
    @classmethod
    def open(cls, settings: Settings | None = None, *, migrate: bool = True) -> Catalog:
        """Engine + migrated schema + blob store from ``settings``."""
        settings = settings or get_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.make_engine(settings.database_url)
        if migrate:
            _migrate_locked(engine, settings.data_dir)
        return cls(engine, FileBlobStore(settings.blob_dir), settings)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def optimize(self) -> None:
        """Refresh the query planner's statistics (SQLite; PostgreSQL's
        autovacuum does this itself); a full ANALYZE of 100k samples takes ~0.2 s."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()

    @contextmanager
    def transaction(self, session: Session | None = None) -> Iterator[Session]:
        """Join ``session`` or open a new committed-on-success transaction."""
        if session is not None:
            yield session
            return
        with db.transaction(self.sessions) as s:
            yield s

    # ---------------------------------------------------------------- datasets
    def create_dataset(
        self,
        name: str,
        *,
        labels: Iterable[str] = (),
        description: str = "",
        created_by: str = "",
        session: Session | None = None,
    ) -> Dataset:
        try:
            name = DatasetName(name=name).name
        except ValidationError:
            raise InvalidInput(
                f"invalid dataset name {name!r}: 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="name",
            ) from None
        labs = clean_labels(labels)
        with self.transaction(session) as s:
            if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                raise Conflict(f"dataset {name!r} already exists", field="name")
            ds = Dataset(name=name, labels=labs, description=description, created_by=created_by)
            s.add(ds)
            try:
                s.flush()
            except IntegrityError:  # created concurrently by another process
                raise Conflict(f"dataset {name!r} already exists", field="name") from None
            return ds

    def _dataset(self, s: Session, ref: DatasetRef, *, lock: bool = False) -> Dataset:
        if isinstance(ref, Dataset):
            ref = ref.id
        q = select(Dataset)
        if isinstance(ref, int):
            q = q.where(Dataset.id == ref)
        else:
            q = q.where(Dataset.name == ref)
        if lock:
            q = q.with_for_update()
        ds = s.scalar(q)
        if ds is None and isinstance(ref, str) and ref.isdigit():
            return self._dataset(s, int(ref), lock=lock)
        if ds is None:
            raise NotFound(f"no dataset {ref!r}", field="dataset")
        return ds

    def get_dataset(self, name_or_id: DatasetRef, *, session: Session | None = None) -> Dataset:
        with self.transaction(session) as s:
            return self._dataset(s, name_or_id)

    def list_datasets(self) -> list[Dataset]:
        with self.transaction() as s:
            return list(s.scalars(select(Dataset).order_by(Dataset.name)))

    def add_labels(
        self, dataset: DatasetRef, labels: Iterable[str], *, session: Session | None = None
    ) -> Dataset:
        """Append new class names (existing ones are kept, order preserved)."""
        new = clean_labels(labels)
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset, lock=True)
            merged = list(ds.labels) + [lab for lab in new if lab not in ds.labels]
            if merged != list(ds.labels):
                ds.labels = merged
                s.flush()
            return ds

    def dataset_stats(self, dataset: DatasetRef) -> DatasetStats:
        with self.transaction() as s:
            ds = self._dataset(s, dataset)
            m = DatasetSample
            per_pool = dict(
                s.execute(
                    select(m.pool, func.count()).where(m.dataset_id == ds.id).group_by(m.pool)
                ).all()
            )
            per_label = dict(
                s.execute(
                    select(m.label, func.count())
                    .where(m.dataset_id == ds.id, m.label.is_not(None))
                    .group_by(m.label)
                ).all()
            )
            per_split = {
                (k.value if k else "none"): v
                for k, v in s.execute(
                    select(m.split, func.count()).where(m.dataset_id == ds.id).group_by(m.split)
                ).all()
            }
            labeled = s.scalar(
                select(func.count()).where(
                    m.dataset_id == ds.id, m.current_annotation_id.is_not(None)
                )
            )
            nver, latest = s.execute(
                select(func.count(), func.max(DatasetVersion.number)).where(
                    DatasetVersion.dataset_id == ds.id
                )
            ).one()
            return DatasetStats(
                id=ds.id,
                name=ds.name,
                description=ds.description,
                labels=list(ds.labels),
                created_at=ds.created_at,
                created_by=ds.created_by,
                samples=sum(per_pool.values()),
                labeled=labeled or 0,
                per_label=per_label,
                per_pool=per_pool,
                per_split=per_split,
                versions=nver or 0,
                latest_version=latest,
            )

    # ---------------------------------------------------------------- samples
    def _next_added_at(self, n: int) -> list[datetime]:
        """Strictly increasing timestamps, so listing order is insertion order."""
        now = utcnow()
        if self._last_added is not None and now <= self._last_added:
            now = self._last_added + timedelta(microseconds=1)
        out = [now + timedelta(microseconds=i) for i in range(n)]
        if out:
            self._last_added = out[-1]
        return out

    def add_samples(
        self,
        dataset: DatasetRef,
        samples: Iterable[SampleIn | dict[str, Any]],
        *,
        pool: str = "main",
        task_id: str | None = None,
        check_blobs: bool = True,
        session: Session | None = None,
    ) -> AddResult:
        """Add samples (whose blobs are stored) to a dataset. Idempotent:
        a sample already in the dataset is counted as ``existing``."""
        items = [x if isinstance(x, SampleIn) else SampleIn.model_validate(x) for x in samples]
        if check_blobs:
            missing = [x.id for x in items if not self.blobs.exists(x.id)]
            if missing:
                raise InvalidInput(f"no blob stored for sample {missing[0]}", field="id")
        result = AddResult(sample_ids=[x.id for x in items])
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset)
            if task_id is not None and s.get(Task, task_id) is None:
                raise NotFound(f"no task {task_id}", field="task_id")
            for batch in _chunks(items):
                uniq: dict[str, SampleIn] = {}
                for x in batch:
                    uniq.setdefault(x.id, x)
                ids = list(uniq)
                known = set(s.scalars(select(Sample.id).where(Sample.id.in_(ids))))
                rows = [x.model_dump() for i, x in uniq.items() if i not in known]
                now = utcnow()
                for r in rows:
                    r["created_at"] = now
                insert_ignore(s, Sample, rows)
                if any(r["idempotency_key"] for r in rows):
                    present = set(s.scalars(select(Sample.id).where(Sample.id.in_(ids))))
                    lost = [i for i in ids if i not in present]
                    if lost:
                        raise Conflict(
                            f"sample {lost[0]}: idempotency key already used by another sample",
                            field="idempotency_key",
                        )
                result.new_blobs_rows += len(rows)
                members = set(
                    s.scalars(
                        select(DatasetSample.sample_id).where(
                            DatasetSample.dataset_id == ds.id, DatasetSample.sample_id.in_(ids)
                        )
                    )
                )
                fresh = [i for i in ids if i not in members]
                # provenance as stored (a known sample keeps its first provenance)
                prov = {
                    r.id: r
                    for r in s.execute(
                        select(Sample.id, Sample.camera, Sample.device, Sample.source).where(
                            Sample.id.in_(fresh)
                        )
                    )
                }
                stamps = self._next_added_at(len(fresh))
                insert_ignore(
                    s,
                    DatasetSample,
                    [
                        {
                            "dataset_id": ds.id,
                            "sample_id": i,
                            "pool": pool,
                            "added_at": t,
                            "added_by_task": task_id,
                            "camera": prov[i].camera,
                            "device": prov[i].device,
                            "source": prov[i].source,
                        }
                        for i, t in zip(fresh, stamps, strict=True)
                    ],
                )
                result.added += len(fresh)
                result.existing += len(batch) - len(fresh)  # incl. repeats in the input
            return result

    def add_image_bytes(
        self,
        dataset: DatasetRef,
        data: bytes,
        *,
        source: str = "",
        pool: str = "main",
        task_id: str | None = None,
        session: Session | None = None,
        **provenance: Any,
    ) -> Sample:
        """Validate, store and add one image; returns its sample (idempotent)."""
        from cloud.catalog._media import probe_image

        info = probe_image(data, source or "image")
        sha = self.blobs.put(data)
        item = SampleIn(
            id=sha,
            media_type=info.media_type,
            width=info.width,
            height=info.height,
            size=len(data),
            phash=info.phash,
            source=source,
            **provenance,
        )
        with self.transaction(session) as s:
            self.add_samples(dataset, [item], pool=pool, task_id=task_id, session=s)
            sample = s.get(Sample, sha)
            assert sample is not None
            return sample

    def get_sample(self, sample_id: str) -> Sample:
        with self.transaction() as s:
            sample = s.get(Sample, sample_id)
            if sample is None:
                raise NotFound(f"no sample {sample_id}", field="sample_id")
            return sample

    def list_samples(
        self,
        dataset: DatasetRef,
        *,
        label: str | None = None,
        source: str | None = None,
        pool: str | None = None,
        camera: str | None = None,
        device: str | None = None,
        split: Split | str | None = None,
        labeled: bool | None = None,
        offset: int = 0,
        limit: int = 50,
        after: str | None = None,
        with_total: bool = True,
    ) -> Page[SampleView]:
        """One page of a dataset's members in insertion order, with current labels.

        ``source`` matches as a prefix. Pass the previous page's ``next_cursor``
        as ``after`` for keyset paging (``offset`` is then ignored).
        """
        if limit < 1 or limit > 1000:
            raise InvalidInput("limit must be between 1 and 1000", field="limit")
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset")
        m, smp, ann = DatasetSample, Sample, Annotation
        with self.transaction() as s:
            ds = self._dataset(s, dataset)
            conds = _member_conditions(
                ds.id,
                label=label,
                source=source,
                pool=pool,
                camera=camera,
                device=device,
                split=split,
                labeled=labeled,
            )
            total = 0
            if with_total:
                total = s.scalar(select(func.count()).select_from(m).where(*conds)) or 0
            # page keys first, from the membership indexes alone (no join); the
            # joins run only for the rows of the page, not for skipped ones
            kq = select(m.sample_id, m.added_at).where(*conds).order_by(m.added_at, m.sample_id)
            if after:
                at, sid = _decode_cursor(after)
                kq = kq.where(
                    tuple_(m.added_at, m.sample_id) > tuple_(literal(at, m.added_at.type), sid)
                )
            else:
                kq = kq.offset(offset)
            keys = s.execute(kq.limit(limit + 1)).all()
            more = len(keys) > limit
            keys = keys[:limit]
            rows = (
                {
                    dm.sample_id: (dm, sm, an)
                    for dm, sm, an in s.execute(
                        select(m, smp, ann)
                        .join(smp, smp.id == m.sample_id)
                        .outerjoin(ann, ann.id == m.current_annotation_id)
                        .where(m.dataset_id == ds.id, m.sample_id.in_([k[0] for k in keys]))
                    )
                }
                if keys
                else {}
            )
            items = [_view(*rows[k[0]]) for k in keys if k[0] in rows]
            cursor = _encode_cursor(rows[keys[-1][0]][0]) if more and keys else None
            return Page[SampleView](
                items=items, total=total, offset=offset, limit=limit, next_cursor=cursor
            )

    def sample_view(self, dataset: DatasetRef, sample_id: str) -> SampleView:
        with self.transaction() as s:
            ds = self._dataset(s, dataset)
            row = s.execute(
                select(DatasetSample, Sample, Annotation)
                .join(Sample, Sample.id == DatasetSample.sample_id)
                .outerjoin(Annotation, Annotation.id == DatasetSample.current_annotation_id)
                .where(DatasetSample.dataset_id == ds.id, DatasetSample.sample_id == sample_id)
            ).first()
            if row is None:
                raise NotFound(f"sample {sample_id} is not in dataset {ds.name!r}")
            return _view(*row)

    # ---------------------------------------------------------------- annotations
    def annotate(
        self,
        dataset: DatasetRef,
        sample_id: str,
        *,
        label: str | None = None,
        boxes: Sequence[Box | dict[str, Any]] | None = None,
        annotator: str,
        source: AnnotationSource = AnnotationSource.HUMAN,
        prelabel_id: int | None = None,
        task_id: str | None = None,
        model_version: str | None = None,
        score: float | None = None,
        session: Session | None = None,
    ) -> Annotation:
        """Append a label. It becomes the sample's current label and records the
        one it supersedes; nothing is edited. ``source=MODEL`` stores a
        pre-label: kept and referable, but never the current label."""
        rows = self.annotate_many(
            dataset,
            [
                {
                    "sample_id": sample_id,
                    "label": label,
                    "boxes": boxes,
                    "prelabel_id": prelabel_id,
                    "model_version": model_version,
                    "score": score,
                }
            ],
            annotator=annotator,
            source=source,
            task_id=task_id,
            session=session,
        )
        return rows[0]

    def annotate_many(
        self,
        dataset: DatasetRef,
        items: Sequence[dict[str, Any]],
        *,
        annotator: str,
        source: AnnotationSource = AnnotationSource.HUMAN,
        task_id: str | None = None,
        session: Session | None = None,
    ) -> list[Annotation]:
        """``annotate`` for many samples in one transaction. Each item has
        ``sample_id`` and ``label`` and/or ``boxes`` (optional ``prelabel_id``,
        ``model_version``, ``score``). All are validated before any is written."""
        source = AnnotationSource(source)
        out: list[Annotation] = []
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset)
            known = set(ds.labels)
            if task_id is not None and s.get(Task, task_id) is None:
                raise NotFound(f"no task {task_id}", field="task_id")
            prepared: list[tuple[dict[str, Any], str]] = []
            for it in items:
                sid = it["sample_id"]
                label, boxes = it.get("label"), it.get("boxes")
                if label is None and boxes is None:
                    raise InvalidInput(f"sample {sid}: give a label or boxes", field="label")
                if label is not None and label not in known:
                    raise InvalidInput(
                        f"unknown label {label!r} for dataset {ds.name!r} "
                        f"(labels: {', '.join(ds.labels) or 'none'}); add it first",
                        field="label",
                    )
                box_dicts: list[dict[str, Any]] | None = None
                if boxes is not None:
                    try:
                        parsed = [b if isinstance(b, Box) else Box.model_validate(b) for b in boxes]
                    except ValidationError as e:
                        raise InvalidInput(
                            f"sample {sid}: invalid box: {e.errors()[0]['msg']}", field="boxes"
                        ) from None
                    for b in parsed:
                        if b.label not in known:
                            raise InvalidInput(
                                f"unknown box label {b.label!r} for dataset {ds.name!r}",
                                field="boxes",
                            )
                    box_dicts = [b.model_dump(exclude_none=True) for b in parsed]
                prepared.append(
                    (
                        {
                            "dataset_id": ds.id,
                            "sample_id": sid,
                            "kind": AnnotationKind.BOXES
                            if box_dicts is not None
                            else AnnotationKind.CLASSIFICATION,
                            "label": label,
                            "boxes": box_dicts,
                            "source": source,
                            "annotator": annotator,
                            "prelabel_id": it.get("prelabel_id"),
                            "task_id": task_id,
                            "model_version": it.get("model_version"),
                            "score": it.get("score"),
                        },
                        sid,
                    )
                )
            for batch in _chunks(prepared):
                sids = [sid for _, sid in batch]
                members = {
                    dm.sample_id: dm
                    for dm in s.scalars(
                        select(DatasetSample)
                        .where(DatasetSample.dataset_id == ds.id, DatasetSample.sample_id.in_(sids))
                        .with_for_update()
                    )
                }
                for sid in sids:
                    if sid not in members:
                        raise NotFound(f"sample {sid} is not in dataset {ds.name!r}")
                boxed = {sid for row, sid in batch if row["boxes"]}
                if boxed:
                    sizes = {
                        i: (w, h)
                        for i, w, h in s.execute(
                            select(Sample.id, Sample.width, Sample.height).where(
                                Sample.id.in_(boxed)
                            )
                        )
                    }
                    for row, sid in batch:
                        w, h = sizes.get(sid, (0, 0))
                        for b in row["boxes"] or ():
                            if w and (b["x2"] > w + 1 or b["y2"] > h + 1):
                                raise InvalidInput(
                                    f"sample {sid}: box {b} outside the {w}x{h} image",
                                    field="boxes",
                                )
                pre_ids = {row["prelabel_id"] for row, _ in batch if row["prelabel_id"]}
                if pre_ids:
                    pres = {
                        a.id: a
                        for a in s.scalars(select(Annotation).where(Annotation.id.in_(pre_ids)))
                    }
                    for row, sid in batch:
                        pid = row["prelabel_id"]
                        if pid and (
                            pid not in pres
                            or pres[pid].dataset_id != ds.id
                            or pres[pid].sample_id != sid
                        ):
                            raise InvalidInput(
                                f"pre-label {pid} is not an annotation of sample {sid}",
                                field="prelabel_id",
                            )
                pending: dict[str, Annotation] = {}
                for row, sid in batch:
                    ann = Annotation(**row)
                    if source != AnnotationSource.MODEL:
                        if sid in pending:  # same sample twice: the later supersedes
                            s.flush()
                            ann.supersedes_id = pending[sid].id
                        else:
                            ann.supersedes_id = members[sid].current_annotation_id
                        pending[sid] = ann
                    s.add(ann)
                    out.append(ann)
                s.flush()  # one multi-row INSERT … RETURNING for the batch
                for sid, ann in pending.items():
                    members[sid].current_annotation_id = ann.id
                    members[sid].label = ann.label
                s.flush()
            return out

    def current_annotations(
        self, dataset: DatasetRef, *, session: Session | None = None
    ) -> dict[str, Annotation]:
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset)
            q = (
                select(Annotation)
                .join(DatasetSample, DatasetSample.current_annotation_id == Annotation.id)
                .where(DatasetSample.dataset_id == ds.id)
            )
            return {a.sample_id: a for a in s.scalars(q)}

    def annotation_history(self, dataset: DatasetRef, sample_id: str) -> list[Annotation]:
        """Every annotation of the sample in the dataset, oldest first."""
        with self.transaction() as s:
            ds = self._dataset(s, dataset)
            return list(
                s.scalars(
                    select(Annotation)
                    .where(Annotation.dataset_id == ds.id, Annotation.sample_id == sample_id)
                    .order_by(Annotation.id)
                )
            )

    # ---------------------------------------------------------------- versions
    def create_version(
        self,
        dataset: DatasetRef,
        *,
        note: str = "",
        created_by: str = "",
        task_id: str | None = None,
        test_fraction: float = TEST_FRACTION,
        session: Session | None = None,
    ) -> DatasetVersion:
        """Freeze membership + current labels as version N+1.

        Labeled samples without a split get one now, stratified by label and
        deterministic (sha256 of dataset id and sample id orders each stratum);
        a sample's split never changes afterwards, so the test set stays frozen
        across versions.
        """
        if not 0.0 <= test_fraction < 1.0:
            raise InvalidInput("test_fraction must be in [0, 1)", field="test_fraction")
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset, lock=True)
            if task_id is not None and s.get(Task, task_id) is None:
                raise NotFound(f"no task {task_id}", field="task_id")
            self._assign_splits(s, ds, test_fraction)
            number = (
                s.scalar(
                    select(func.max(DatasetVersion.number)).where(
                        DatasetVersion.dataset_id == ds.id
                    )
                )
                or 0
            ) + 1
            m = DatasetSample
            count, labeled = s.execute(
                select(func.count(), func.count(m.current_annotation_id)).where(
                    m.dataset_id == ds.id
                )
            ).one()
            ver = DatasetVersion(
                dataset_id=ds.id,
                number=number,
                note=note,
                labels=list(ds.labels),
                sample_count=count,
                labeled_count=labeled,
                created_by=created_by,
                task_id=task_id,
            )
            s.add(ver)
            s.flush()
            s.execute(
                insert(DatasetVersionItem).from_select(
                    ["version_id", "sample_id", "annotation_id", "split"],
                    select(literal(ver.id), m.sample_id, m.current_annotation_id, m.split).where(
                        m.dataset_id == ds.id
                    ),
                )
            )
            if task_id is not None:
                s.add(
                    LineageEdge(
                        task_id=task_id,
                        direction="output",
                        entity="dataset_version",
                        entity_id=str(ver.id),
                        role=f"{ds.name}@{number}",
                    )
                )
            s.flush()
            return ver

    def _assign_splits(self, s: Session, ds: Dataset, test_fraction: float) -> None:
        m = DatasetSample
        rows = s.execute(
            select(m.sample_id, m.split, m.label, Annotation)
            .join(Annotation, Annotation.id == m.current_annotation_id)
            .where(m.dataset_id == ds.id)
        ).all()
        strata: dict[str, list[tuple[str, Split | None]]] = defaultdict(list)
        for sid, split, label, ann in rows:
            strata[_stratum(ann, label)].append((sid, split))
        updates: list[dict[str, Any]] = []
        for members in strata.values():
            new = sorted(
                (sid for sid, sp in members if sp is None), key=lambda i: _split_key(ds.id, i)
            )
            if not new:
                continue
            n_test = sum(1 for _, sp in members if sp == Split.TEST)
            total = len(members)
            target = int(test_fraction * total + 0.5)
            if test_fraction > 0 and total >= 2 and target == 0:
                target = 1
            need = max(0, min(len(new), target - n_test))
            for k, sid in enumerate(new):
                updates.append(
                    {
                        "dataset_id": ds.id,
                        "sample_id": sid,
                        "split": Split.TEST if k < need else Split.TRAIN,
                    }
                )
        for batch in _chunks(updates):
            s.execute(update(DatasetSample), list(batch))

    def get_version(
        self, dataset: DatasetRef, number: int | None = None, *, session: Session | None = None
    ) -> DatasetVersion:
        """Version ``number`` of the dataset (the newest when None)."""
        with self.transaction(session) as s:
            ds = self._dataset(s, dataset)
            q = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
            if number is None:
                q = q.order_by(DatasetVersion.number.desc()).limit(1)
            else:
                q = q.where(DatasetVersion.number == number)
            ver = s.scalar(q)
            if ver is None:
                what = "no versions" if number is None else f"no version {number}"
                raise NotFound(f"dataset {ds.name!r} has {what}", field="version")
            return ver

    def list_versions(self, dataset: DatasetRef) -> list[DatasetVersion]:
        with self.transaction() as s:
            ds = self._dataset(s, dataset)
            return list(
                s.scalars(
                    select(DatasetVersion)
                    .where(DatasetVersion.dataset_id == ds.id)
                    .order_by(DatasetVersion.number)
                )
            )

    def iter_items(self, dataset: DatasetRef, version: int | None = None) -> Iterator[VersionItem]:
        """Stream the members (with label, boxes, split) of a version, or of the
        working set when ``version`` is None, ordered by sample id."""
        with self.sessions() as s:
            ds = self._dataset(s, dataset)
            if version is None:
                m = DatasetSample
                q = (
                    select(m.sample_id, m.split, m.current_annotation_id, Annotation, Sample)
                    .join(Sample, Sample.id == m.sample_id)
                    .outerjoin(Annotation, Annotation.id == m.current_annotation_id)
                    .where(m.dataset_id == ds.id)
                    .order_by(m.sample_id)
                )
            else:
                ver = self.get_version(ds.id, version, session=s)
                v = DatasetVersionItem
                q = (
                    select(v.sample_id, v.split, v.annotation_id, Annotation, Sample)
                    .join(Sample, Sample.id == v.sample_id)
                    .outerjoin(Annotation, Annotation.id == v.annotation_id)
                    .where(v.version_id == ver.id)
                    .order_by(v.sample_id)
                )
            for sid, split, aid, ann, smp in s.execute(q.execution_options(yield_per=1000)):
                yield VersionItem(
                    sample_id=sid,
                    split=split,
                    annotation_id=aid,
                    label=ann.label if ann else None,
                    boxes=ann.boxes if ann else None,
                    kind=ann.kind if ann else None,
                    media_type=smp.media_type,
                    width=smp.width,
                    height=smp.height,
                    source=smp.source,
                )

    # ---------------------------------------------------------------- lineage
    def record_lineage(
        self,
        task_id: str,
        direction: str,
        entity: str,
        entity_id: str | int,
        role: str = "",
        *,
        session: Session | None = None,
    ) -> LineageEdge:
        if direction not in LINEAGE_DIRECTIONS:
            raise InvalidInput(
                f"lineage direction must be input or output, not {direction!r}", field="direction"
            )
        with self.transaction(session) as s:
            if s.get(Task, task_id) is None:
                raise NotFound(f"no task {task_id}", field="task_id")
            edge = LineageEdge(
                task_id=task_id,
                direction=direction,
                entity=entity,
                entity_id=str(entity_id),
                role=role,
            )
            s.add(edge)
            s.flush()
            return edge

    def lineage(
        self,
        *,
        task_id: str | None = None,
        entity: str | None = None,
        entity_id: str | int | None = None,
    ) -> list[LineageEdge]:
        """Edges of a task, or the edges touching an entity."""
        with self.transaction() as s:
            q = select(LineageEdge)
            if task_id is not None:
                q = q.where(LineageEdge.task_id == task_id)
            if entity is not None:
                q = q.where(LineageEdge.entity == entity)
            if entity_id is not None:
                q = q.where(LineageEdge.entity_id == str(entity_id))
            return list(s.scalars(q.order_by(LineageEdge.id)))


def _prefix_upper(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` in code
    point order (= UTF-8 byte order), or None when there is none."""
    chars = list(prefix)
    while chars:
        c = ord(chars.pop()) + 1
        if 0xD800 <= c <= 0xDFFF:  # surrogates never occur in stored text
            c = 0xE000
        if c <= 0x10FFFF:
            return "".join(chars) + chr(c)
    return None


def _member_conditions(
    dataset_id: int,
    *,
    label: str | None = None,
    source: str | None = None,
    pool: str | None = None,
    camera: str | None = None,
    device: str | None = None,
    split: Split | str | None = None,
    labeled: bool | None = None,
) -> list[Any]:
    """WHERE conditions on ``dataset_samples`` alone for the listing filters
    (``source`` is a prefix; ``""`` matches every member)."""
    m = DatasetSample
    conds: list[Any] = [m.dataset_id == dataset_id]
    if label is not None:
        conds.append(m.label == label)
    if pool is not None:
        conds.append(m.pool == pool)
    if split is not None:
        conds.append(m.split == Split(split))
    if labeled is True:
        conds.append(m.current_annotation_id.is_not(None))
    elif labeled is False:
        conds.append(m.current_annotation_id.is_(None))
    if source:  # an index range, byte-wise on both backends (see the column)
        conds.append(m.source >= source)
        upper = _prefix_upper(source)
        if upper is not None:
            conds.append(m.source < upper)
    if camera is not None:
        conds.append(m.camera == camera)
    if device is not None:
        conds.append(m.device == device)
    return conds


def _view(dm: DatasetSample, sm: Sample, an: Annotation | None) -> SampleView:
    return SampleView(
        id=sm.id,
        media_type=sm.media_type,
        width=sm.width,
        height=sm.height,
        size=sm.size,
        phash=sm.phash,
        source=sm.source,
        frame_index=sm.frame_index,
        camera=sm.camera,
        device=sm.device,
        model_version=sm.model_version,
        captured_at=sm.captured_at,
        reason=sm.reason,
        selector=sm.selector,
        scores=sm.scores or {},
        pool=dm.pool,
        split=dm.split,
        added_at=dm.added_at,
        label=dm.label,
        annotation_id=dm.current_annotation_id,
        annotation_kind=an.kind if an else None,
        annotation_source=an.source if an else None,
        annotator=an.annotator if an else None,
        boxes=an.boxes if an else None,
    )


def _encode_cursor(dm: DatasetSample) -> str:
    return f"{dm.added_at.isoformat()}|{dm.sample_id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, sid = cursor.split("|", 1)
        return datetime.fromisoformat(at), sid
    except ValueError:
        raise InvalidInput(f"invalid page cursor {cursor!r}", field="after") from None


def _migrate_locked(engine: Engine, data_dir: Path) -> None:
    """``db.migrate`` serialised between processes opening the catalog at once."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")
            try:
                db.migrate(engine)
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
                conn.commit()
        return
    with open(data_dir / ".migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            db.migrate(engine)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["Catalog", "DatasetRef", "clean_labels", "insert_ignore"]
