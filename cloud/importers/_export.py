"""Export a dataset (working set or a version) as COCO, YOLO or CSV.

The export is written to a temporary sibling folder and renamed into place,
so ``out`` either holds a complete export or does not exist. An existing,
non-empty ``out`` is never overwritten. Image bytes come from the blob store
with their hash verified.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cloud.catalog import Catalog
from cloud.catalog._media import EXTENSIONS
from cloud.catalog.models import AnnotationKind
from cloud.errors import Conflict, InvalidInput
from cloud.importers._report import ExportReport

Format = Literal["coco", "yolo", "csv"]
FORMATS = ("coco", "yolo", "csv")


def _image_name(sample_id: str, media_type: str) -> str:
    return sample_id + EXTENSIONS.get(media_type, ".img")


def export_dataset(
    catalog: Catalog,
    dataset: str | int,
    fmt: str,
    out: Path | str,
    version: int | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> ExportReport:
    """Write ``dataset`` (``version``, or the working set when None) to ``out``.

    * ``coco``: ``annotations.json`` + ``images/``; boxes as bbox annotations,
      classification labels as annotations without a bbox; each image carries
      its ``split`` and ``sample_id``.
    * ``yolo``: with box labels, ``data.yaml`` + ``classes.txt`` +
      ``images/<split>/`` + ``labels/<split>/`` (normalised cx cy w h); with only
      classification labels, the folder-per-class layout ``<split>/<label>/``.
      Unlabeled samples go to ``unlabeled/``.
    * ``csv``: ``labels.csv`` (``path,label,split,sample_id,source,boxes``) +
      ``images/``; re-importable with ``--labels``.
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r} (coco, yolo, csv)", field="format")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not empty", field="out")
    say = progress or (lambda _f, _m: None)
    ds = catalog.get_dataset(dataset)
    labels = list(catalog.get_version(ds.id, version).labels if version is not None else ds.labels)
    stats = catalog.dataset_stats(ds.id)
    total = max(stats.samples, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        items = catalog.iter_items(ds.id, version)
        if fmt == "yolo":
            has_boxes = any(
                it.kind == AnnotationKind.BOXES for it in catalog.iter_items(ds.id, version)
            )
        n_img = n_lab = n_ann = 0
        coco_images: list[dict[str, Any]] = []
        coco_anns: list[dict[str, Any]] = []
        cat_id = {name: i + 1 for i, name in enumerate(labels)}
        csv_file = None
        writer = None
        if fmt == "csv":
            csv_file = open(tmp / "labels.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
            writer = csv.writer(csv_file)
            writer.writerow(["path", "label", "split", "sample_id", "source", "boxes"])
        try:
            for it in items:
                name = _image_name(it.sample_id, it.media_type)
                split = it.split.value if it.split else None
                labeled = it.annotation_id is not None
                if fmt == "yolo":
                    if has_boxes:
                        sub = split or ("unlabeled" if not labeled else "train")
                        rel = Path("images") / sub / name
                    else:
                        rel = (
                            Path(split or "train") / it.label / name
                            if labeled and it.label
                            else Path("unlabeled") / name
                        )
                else:
                    rel = Path("images") / name
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(catalog.blobs.get(it.sample_id))
                n_img += 1
                n_lab += labeled
                if fmt == "coco":
                    img_id = n_img
                    coco_images.append(
                        {
                            "id": img_id,
                            "file_name": rel.as_posix(),
                            "width": it.width,
                            "height": it.height,
                            "sample_id": it.sample_id,
                            "split": split,
                            "source": it.source,
                        }
                    )
                    if it.label and it.label in cat_id:
                        coco_anns.append(
                            {
                                "id": len(coco_anns) + 1,
                                "image_id": img_id,
                                "category_id": cat_id[it.label],
                            }
                        )
                    for b in it.boxes or []:
                        w, h = b["x2"] - b["x1"], b["y2"] - b["y1"]
                        coco_anns.append(
                            {
                                "id": len(coco_anns) + 1,
                                "image_id": img_id,
                                "category_id": cat_id[b["label"]],
                                "bbox": [b["x1"], b["y1"], w, h],
                                "area": w * h,
                                "iscrowd": 0,
                            }
                        )
                    n_ann += int(bool(it.label)) + len(it.boxes or [])
                elif fmt == "yolo" and has_boxes and it.boxes is not None:
                    lab_path = tmp / "labels" / rel.relative_to("images").with_suffix(".txt")
                    lab_path.parent.mkdir(parents=True, exist_ok=True)
                    lines = []
                    for b in it.boxes:
                        W, H = max(it.width, 1), max(it.height, 1)
                        cx, cy = (b["x1"] + b["x2"]) / 2 / W, (b["y1"] + b["y2"]) / 2 / H
                        bw, bh = (b["x2"] - b["x1"]) / W, (b["y2"] - b["y1"]) / H
                        lines.append(
                            f"{labels.index(b['label'])} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"
                        )
                    lab_path.write_text(
                        "\n".join(lines) + ("\n" if lines else ""), encoding="utf-8"
                    )
                    n_ann += len(lines)
                elif fmt == "yolo":
                    n_ann += int(bool(labeled and it.label))
                elif writer is not None:
                    writer.writerow(
                        [
                            rel.as_posix(),
                            it.label or "",
                            split or "",
                            it.sample_id,
                            it.source,
                            json.dumps(it.boxes) if it.boxes is not None else "",
                        ]
                    )
                    n_ann += int(bool(it.label)) + len(it.boxes or [])
                if n_img % 200 == 0:
                    say(min(n_img / total, 0.99), f"exported {n_img} images")
        finally:
            if csv_file is not None:
                csv_file.close()
        if fmt == "coco":
            doc = {
                "info": {
                    "description": f"citybrain dataset {ds.name}",
                    "version": str(version) if version is not None else "working set",
                },
                "images": coco_images,
                "annotations": coco_anns,
                "categories": [
                    {"id": i, "name": n, "supercategory": ""} for n, i in cat_id.items()
                ],
            }
            (tmp / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
        elif fmt == "yolo":
            (tmp / "classes.txt").write_text("".join(f"{n}\n" for n in labels), encoding="utf-8")
            if has_boxes:
                splits = sorted(p.name for p in (tmp / "images").iterdir()) if n_img else []
                lines = ["path: .", *(f"{s}: images/{s}" for s in splits if s != "unlabeled")]
                lines.append("names:")
                lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(labels)]
                (tmp / "data.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(1.0, f"exported {n_img} images to {out}")
    return ExportReport(
        dataset=ds.name,
        version=version,
        format=fmt,
        out=str(out),
        images=n_img,
        labeled=n_lab,
        annotations=n_ann,
    )
