"""``import_path``: files on disk -> blobs + one catalog transaction.

The pipeline, all-or-nothing per call:

1. **plan** - detect the kind (image, folder, video, COCO, YOLO, Label Studio,
   zip of any of these), read the label files, check that every file named by a
   CSV / COCO / Label Studio file exists, that archive members stay inside the
   archive, that videos decode. Any problem here raises before anything is written.
2. **read** - decode every image completely (truncation is detected), sample
   and de-duplicate video frames, store the bytes in the blob store and spool
   one small record per sample to a temporary file. Folders are walked lazily
   and images decoded by a small thread pool in chunks, so memory stays flat
   in the number of files (label files - COCO, YOLO, Label Studio, CSV - are
   held in memory, as they are read whole).
   Blobs written by a call that later fails are harmless: content-addressed,
   referenced by nothing, and re-used by the next import of the same bytes.
3. **commit** - create the dataset if asked, add labels, samples, memberships
   and annotations in ONE database transaction, in batches.

Files are either *explicit* (a single file given on the command line, files
named by a label file: CSV, COCO, YOLO, Label Studio) or *found* (while walking
a folder or an archive). A corrupt or unsupported explicit file is an error
naming it and nothing is imported; a corrupt or unsupported found file is
skipped and listed, with the reason, in the report.

Imported labels never overwrite: a sample that already has a current label in
the dataset keeps it; a different imported label is reported as skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloud.catalog import Catalog, CorruptImage, probe_image
from cloud.catalog._media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from cloud.catalog._schemas import DatasetName
from cloud.catalog.models import (
    Annotation,
    AnnotationSource,
    Dataset,
    DatasetSample,
    LineageEdge,
    Task,
)
from cloud.errors import Conflict, InvalidInput, NotFound
from cloud.importers._archive import extract_zip, remove_tree
from cloud.importers._formats import (
    Entry,
    Plan,
    count_folder,
    is_yolo,
    iter_folder,
    json_kind,
    read_coco,
    read_labels_csv,
    read_labelstudio,
    read_yolo,
)
from cloud.importers._report import ImportReport, SkippedFile
from cloud.importers._video import VideoStats, frame_step, probe_video, sample_frames

Progress = Callable[[float, str], None]
_COMMIT_BATCH = 500
_READ_CHUNK = 64
#: an archive may unpack to at most this many times the upload limit
ARCHIVE_EXPANSION = 20
#: imports adding at least this many samples refresh the planner statistics
ANALYZE_AFTER = 1000
#: test seam: called inside the open commit transaction after each batch.
#: ``progress`` is never called there: progress callbacks usually write the
#: task record, which on SQLite would wait on this very transaction's lock.
_after_commit_batch: Callable[[int, int], None] | None = None


def _no_progress(_f: float, _m: str) -> None:
    return None


def _plan_for(path: Path, display_root: str, exclude: set[Path]) -> Plan:
    """The plan for a file or folder that is not an archive."""
    if path.is_dir():
        if is_yolo(path):
            return read_yolo(path, display_root)
        top_json = sorted(p for p in path.iterdir() if p.suffix.lower() == ".json" and p.is_file())
        if len(top_json) == 1:
            try:
                kind, data = json_kind(top_json[0])
            except InvalidInput:
                kind, data = "", None
            if kind in ("coco", "labelstudio"):
                reader = read_coco if kind == "coco" else read_labelstudio
                plan = reader(top_json[0], data, display_root)
                _add_unlisted(plan, path, display_root, exclude | {top_json[0].resolve()})
                return plan
        plan = Plan("folder")
        plan.stream = iter_folder(path, plan, exclude=exclude, display_root=display_root)
        plan.total = count_folder(path)
        return plan
    suffix = path.suffix.lower()
    if suffix == ".json":
        kind, data = json_kind(path)
        parent = path.parent.name or "."
        if kind == "coco":
            return read_coco(path, data, parent)
        return read_labelstudio(path, data, parent)
    if suffix in IMAGE_SUFFIXES:
        return Plan("image", [Entry(path, path.name, explicit=True)])
    if suffix in VIDEO_SUFFIXES:
        return Plan("video", [Entry(path, path.name, explicit=True, is_video=True)])
    raise InvalidInput(
        f"{path.name}: unsupported file type {suffix or '(none)'} (images, videos, "
        "COCO / Label Studio JSON, YOLO folders, zip archives)",
        field="path",
    )


def _add_unlisted(plan: Plan, root: Path, display_root: str, exclude: set[Path]) -> None:
    """A folder holding a label file: its other images are imported too
    (unlabeled), so nothing in the folder is silently left out."""
    listed = {e.path.resolve() for e in plan.entries}
    for e in iter_folder(root, plan, exclude=exclude, display_root=display_root):
        if e.path.resolve() not in listed:
            plan.entries.append(e)


def _archive_root(d: Path) -> Path:
    entries = [p for p in d.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return d


def _norm_boxes(entry: Entry, w: int, h: int) -> list[dict[str, Any]] | None:
    if entry.boxes is None:
        return None
    out = []
    for lab, x1, y1, x2, y2 in entry.boxes:
        if entry.norm:
            x1, x2, y1, y2 = x1 * w, x2 * w, y1 * h, y2 * h
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(w), x2), min(float(h), y2)
        if not (x2 > x1 and y2 > y1):
            raise InvalidInput(
                f"{entry.display}: a {lab!r} box lies outside the {w}x{h} image", field="file"
            )
        out.append(
            {
                "x1": round(x1, 2),
                "y1": round(y1, 2),
                "x2": round(x2, 2),
                "y2": round(y2, 2),
                "label": lab,
            }
        )
    return out


def _annotation(entry: Entry, w: int, h: int) -> dict[str, Any] | None:
    boxes = _norm_boxes(entry, w, h)
    if entry.label is None and boxes is None:
        return None
    return {"label": entry.label, "boxes": boxes}


def import_path(
    catalog: Catalog,
    path: Path | str,
    dataset: str,
    *,
    labels_csv: Path | str | None = None,
    every_k: int | None = None,
    every_s: float | None = None,
    dedup_threshold: int = 4,
    create: bool = True,
    progress: Progress | None = None,
    task_id: str | None = None,
    created_by: str = "",
    pool: str = "main",
) -> ImportReport:
    """Import ``path`` into ``dataset``; see the module docstring for the rules.

    ``every_k`` / ``every_s`` choose video frame sampling (default one frame a
    second); ``dedup_threshold`` is the largest dHash Hamming distance at which
    a sampled frame counts as a near-duplicate of a kept one (negative: off).
    """
    t0 = time.monotonic()
    report_progress = progress or _no_progress
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or folder", field="path")
    try:
        DatasetName(name=dataset)
    except Exception:  # noqa: BLE001 - pydantic error -> one clear line
        raise InvalidInput(f"invalid dataset name {dataset!r}", field="name") from None
    frame_step(25.0, every_k, every_s)  # validate sampling parameters up front
    with catalog.sessions() as s:
        exists = s.scalar(select(Dataset.id).where(Dataset.name == dataset)) is not None
        task_ok = task_id is None or s.get(Task, task_id) is not None
    if not exists and not create:
        raise NotFound(f"no dataset {dataset!r} (use --create to make it)", field="name")
    if not task_ok:
        raise NotFound(f"no task {task_id}", field="task_id")

    report_progress(0.0, f"scanning {path.name}")
    extract_dir: Path | None = None
    try:
        csv_path = Path(labels_csv) if labels_csv is not None else None
        if csv_path is not None and not csv_path.is_file():
            raise InvalidInput(f"{csv_path}: labels CSV not found", field="labels")
        exclude = {csv_path.resolve()} if csv_path is not None else set()
        if path.is_file() and path.suffix.lower() == ".zip":
            extract_dir = Path(tempfile.mkdtemp(prefix="import-", dir=catalog.tmp_dir))
            zip_skipped = extract_zip(
                path,
                extract_dir,
                max_bytes=catalog.settings.max_upload_mb * (1 << 20) * ARCHIVE_EXPANSION,
            )
            root = _archive_root(extract_dir)
            plan = _plan_for(root, path.name, exclude)
            plan.kind = f"zip:{plan.kind}"
            plan.skipped[:0] = zip_skipped
        else:
            root = path if path.is_dir() else path.parent
            plan = _plan_for(path, path.name if path.is_dir() else path.parent.name, exclude)

        csv_labels = (
            read_labels_csv(csv_path, [root, path.parent]) if csv_path is not None else None
        )
        if csv_labels is not None and plan.stream is None:
            _apply_csv(plan, csv_labels, csv_path)  # type: ignore[arg-type]
            csv_labels = None  # applied and checked before anything is read
        if csv_labels is not None:
            for label, _raw in csv_labels.values():
                plan.add_label(label)
        report = ImportReport(
            dataset=dataset,
            dataset_id=0,
            kind=plan.kind,
            created=False,
            task_id=task_id,
        )
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8", dir=catalog.tmp_dir) as spool:
            reader = _Reader(catalog, plan, every_k, every_s, dedup_threshold, csv_labels)
            n = reader.run(spool, report, report_progress)
            report.skipped[:0] = plan.skipped  # found-and-skipped files, in walk order
            report.files_seen = reader.files + len(plan.skipped)
            if csv_labels is not None:
                _check_csv_used(csv_labels, reader.csv_used, csv_path)  # type: ignore[arg-type]
            report_progress(0.9, f"committing {n} samples")
            snapshot = report.model_copy(deep=True)
            for attempt in (1, 2):
                spool.seek(0)
                try:
                    _commit(
                        catalog,
                        spool,
                        n,
                        plan,
                        dataset,
                        create,
                        task_id,
                        created_by,
                        pool,
                        report,
                        path,
                    )
                    break
                except Conflict:
                    # another import created the dataset meanwhile: commit into it
                    if attempt == 2:
                        raise
                    report = snapshot.model_copy(deep=True)
    finally:
        if extract_dir is not None:
            remove_tree(extract_dir)
    if report.added >= ANALYZE_AFTER:
        catalog.optimize()  # fresh planner statistics keep filtered paging fast
    report.seconds = round(time.monotonic() - t0, 3)
    report_progress(1.0, f"imported {report.added} new samples into {dataset}")
    return report


def _apply_csv(plan: Plan, labels: dict[Path, tuple[str, str]], csv_path: Path) -> None:
    used: set[Path] = set()
    for e in plan.entries:
        if _label_from_csv(e, labels):
            used.add(e.path.resolve())
            plan.add_label(e.label)  # type: ignore[arg-type]
    _check_csv_used(labels, used, csv_path)


def _label_from_csv(e: Entry, labels: dict[Path, tuple[str, str]]) -> bool:
    hit = labels.get(e.path.resolve())
    if hit is None:
        return False
    e.label = hit[0]
    e.explicit = True  # named by the CSV: must import, or the call fails
    return True


def _check_csv_used(labels: dict[Path, tuple[str, str]], used: set[Path], csv_path: Path) -> None:
    unused = [raw for k, (_lab, raw) in labels.items() if k not in used]
    if unused:
        more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
        raise InvalidInput(
            f"{csv_path.name} names files that are not part of this import "
            f"(unsupported type or outside it): {', '.join(unused[:5])}{more}",
            field="labels",
        )


def _read_image(catalog: Catalog, e: Entry) -> dict[str, Any] | SkippedFile:
    try:
        data = e.path.read_bytes()
    except OSError as err:
        if e.explicit:
            raise InvalidInput(f"{e.display}: cannot read ({err.strerror})", field="file") from None
        return SkippedFile(file=e.display, reason=f"cannot read ({err.strerror})")
    try:
        info = probe_image(data, e.display)
    except CorruptImage as err:
        if e.explicit:
            raise
        return SkippedFile(file=e.display, reason=err.message.split(": ", 1)[-1])
    ann = _annotation(e, info.width, info.height)
    sha = catalog.blobs.put(data)
    return {
        "s": {
            "id": sha,
            "media_type": info.media_type,
            "width": info.width,
            "height": info.height,
            "size": len(data),
            "phash": info.phash,
            "source": e.display,
        },
        "a": ann,
        "f": e.display,
    }


class _Reader:
    """Phase 2: decode, store and spool every entry (streamed, flat memory)."""

    def __init__(
        self,
        catalog: Catalog,
        plan: Plan,
        every_k: int | None,
        every_s: float | None,
        dedup_threshold: int,
        csv_labels: dict[Path, tuple[str, str]] | None,
    ) -> None:
        self.catalog = catalog
        self.plan = plan
        self.every_k, self.every_s = every_k, every_s
        self.dedup_threshold = dedup_threshold
        self.csv_labels = csv_labels
        self.csv_used: set[Path] = set()
        self.files = 0
        self.n = 0
        self.total = max(plan.total if plan.stream is not None else len(plan.entries), 1)
        self.done = 0.0
        self._last_emit = 0.0

    def _entries(self) -> Iterator[Entry]:
        src = self.plan.stream if self.plan.stream is not None else iter(self.plan.entries)
        for e in src:
            self.files += 1
            if self.csv_labels is not None and _label_from_csv(e, self.csv_labels):
                self.csv_used.add(e.path.resolve())
            yield e

    def _emit(self, progress: Progress, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_emit >= 0.1:
            self._last_emit = now
            progress(0.02 + 0.88 * min(self.done / self.total, 1.0), msg)

    def _write(self, spool: Any, rec: dict[str, Any]) -> None:
        spool.write(json.dumps(rec, separators=(",", ":")))
        spool.write("\n")
        self.n += 1

    def run(self, spool: Any, report: ImportReport, progress: Progress) -> int:
        workers = min(8, (os.cpu_count() or 2) * 2)
        it = self._entries()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
            while True:
                chunk = list(itertools.islice(it, _READ_CHUNK))
                if not chunk:
                    break
                images = [e for e in chunk if not e.is_video]
                for res in pool.map(lambda en: _read_image(self.catalog, en), images):
                    if isinstance(res, SkippedFile):
                        report.skipped.append(res)
                    else:
                        report.images_read += 1
                        self._write(spool, res)
                self.done += len(images)
                self._emit(progress, f"read {report.images_read} images")
                for e in chunk:
                    if e.is_video:
                        self._video(e, spool, report, progress)
        return self.n

    def _video(self, e: Entry, spool: Any, report: ImportReport, progress: Progress) -> None:
        try:
            fps, _count = probe_video(e.path, e.display)
        except InvalidInput as err:
            if e.explicit:
                raise
            report.skipped.append(
                SkippedFile(file=e.display, reason=err.message.split(": ", 1)[-1])
            )
            self.done += 1
            return
        step = frame_step(fps, self.every_k, self.every_s)
        stats = VideoStats()
        base = self.done

        def on_frame(idx: int) -> None:
            est = max(stats.frames, 1)
            self.done = base + min(idx / est, 1.0)
            self._emit(progress, f"{e.display}: frame {idx}")

        for fr in sample_frames(
            e.path,
            e.display,
            step=step,
            dedup_threshold=self.dedup_threshold,
            stats=stats,
            on_frame=on_frame,
        ):
            sha = self.catalog.blobs.put(fr.jpeg)
            self._write(
                spool,
                {
                    "s": {
                        "id": sha,
                        "media_type": "image/jpeg",
                        "width": fr.width,
                        "height": fr.height,
                        "size": len(fr.jpeg),
                        "phash": fr.phash,
                        "source": f"{e.display}#frame={fr.index}",
                        "frame_index": fr.index,
                    },
                    "a": _annotation(e, fr.width, fr.height),
                    "f": e.display,
                },
            )
        report.frames_sampled += stats.sampled
        report.duplicates_removed += stats.duplicates
        self.done = base + 1


def _iter_batches(spool: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for line in spool:
        batch.append(json.loads(line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _commit(
    catalog: Catalog,
    spool: Any,
    n: int,
    plan: Plan,
    dataset: str,
    create: bool,
    task_id: str | None,
    created_by: str,
    pool: str,
    report: ImportReport,
    path: Path,
) -> None:
    annotator = created_by or "import"
    with catalog.transaction() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == dataset).with_for_update())
        if ds is None:
            if not create:
                raise NotFound(f"no dataset {dataset!r} (use --create to make it)", field="name")
            ds = catalog.create_dataset(dataset, created_by=created_by, session=s)
            report.created = True
        report.dataset_id = ds.id
        before = list(ds.labels)
        if plan.labels:
            catalog.add_labels(ds.id, plan.labels, session=s)
        report.labels_added = [lab for lab in ds.labels if lab not in before]
        done = 0
        for batch in _iter_batches(spool, _COMMIT_BATCH):
            res = catalog.add_samples(
                ds.id,
                [r["s"] for r in batch],
                pool=pool,
                task_id=task_id,
                check_blobs=False,
                session=s,
            )
            report.added += res.added
            report.existing += res.existing
            wanted = [r for r in batch if r["a"] is not None]
            if wanted:
                _import_annotations(catalog, s, ds.id, wanted, annotator, task_id, report)
            done += len(batch)
            if _after_commit_batch is not None:
                _after_commit_batch(done, n)
        if task_id is not None:
            s.add(
                LineageEdge(
                    task_id=task_id,
                    direction="output",
                    entity="dataset",
                    entity_id=str(ds.id),
                    role="import",
                )
            )
            s.add(
                LineageEdge(
                    task_id=task_id,
                    direction="input",
                    entity="file",
                    entity_id=str(path)[-128:],
                    role=report.kind,
                )
            )


def _import_annotations(
    catalog: Catalog,
    s: Any,
    dataset_id: int,
    records: list[dict[str, Any]],
    annotator: str,
    task_id: str | None,
    report: ImportReport,
) -> None:
    sids = list({r["s"]["id"] for r in records})
    current = {
        sid: (label, boxes)
        for sid, label, boxes in s.execute(
            select(DatasetSample.sample_id, Annotation.label, Annotation.boxes)
            .join(Annotation, Annotation.id == DatasetSample.current_annotation_id)
            .where(DatasetSample.dataset_id == dataset_id, DatasetSample.sample_id.in_(sids))
        )
    }
    todo: list[dict[str, Any]] = []
    for r in records:
        sid, a = r["s"]["id"], r["a"]
        new = (a["label"], a["boxes"])
        if sid in current:
            if current[sid] == new:
                report.annotations_unchanged += 1
            else:
                old_label, old_boxes = current[sid]
                have = repr(old_label) if old_boxes is None else f"{len(old_boxes)} boxes"
                report.skipped.append(
                    SkippedFile(
                        file=r["f"],
                        reason=f"label not applied: the sample is already labeled {have} in this "
                        "dataset (labels are never overwritten by an import)",
                    )
                )
            continue
        current[sid] = new
        todo.append({"sample_id": sid, "label": a["label"], "boxes": a["boxes"]})
    if todo:
        catalog.annotate_many(
            dataset_id,
            todo,
            annotator=annotator,
            source=AnnotationSource.IMPORT,
            task_id=task_id,
            session=s,
        )
        report.annotations_added += len(todo)
