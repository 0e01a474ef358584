"""Readers of the label formats: CSV, COCO JSON, YOLO folders, Label Studio JSON.

Each turns its input into ``Entry`` objects (a file plus an optional label or
boxes) after checking structure and that every named file exists; image bytes
are read later, by the import pipeline.
"""

from __future__ import annotations

import csv
import json
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.catalog._media import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from cloud.errors import InvalidInput
from cloud.importers._report import SkippedFile

YOLO_CLASS_FILES = ("data.yaml", "data.yml", "dataset.yaml", "classes.txt", "obj.names")


@dataclass(slots=True)
class Entry:
    path: Path
    display: str  # name used in reports and stored as the sample's source
    explicit: bool  # named explicitly: a corrupt file is an error, not a skip
    label: str | None = None
    # boxes as (label, x1, y1, x2, y2); ``norm`` = fractions of the image size
    boxes: list[tuple[str, float, float, float, float]] | None = None
    norm: bool = False
    is_video: bool = False


@dataclass(slots=True)
class Plan:
    kind: str
    entries: list[Entry] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # class names in format order
    #: folders: entries streamed from the walk instead of ``entries`` (memory
    #: stays flat in the number of files); ``total`` is their count
    stream: Iterator[Entry] | None = None
    total: int = 0

    def add_label(self, label: str) -> None:
        if label not in self.labels:
            self.labels.append(label)


def _missing_error(what: str, missing: list[str]) -> InvalidInput:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return InvalidInput(
        f"{what} names files that do not exist: {', '.join(missing[:5])}{more}", field="file"
    )


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{path.name}: not valid JSON ({e})", field="file") from None


def json_kind(path: Path) -> tuple[str, Any]:
    data = _load_json(path)
    if (
        isinstance(data, dict)
        and "images" in data
        and ("annotations" in data or "categories" in data)
    ):
        return "coco", data
    if isinstance(data, list) and all(isinstance(t, dict) and "data" in t for t in data):
        return "labelstudio", data
    raise InvalidInput(
        f"{path.name}: JSON is neither a COCO file nor a Label Studio export", field="file"
    )


# ---------------------------------------------------------------- folders
def iter_folder(
    root: Path, plan: Plan, *, exclude: set[Path], display_root: str
) -> Iterator[Entry]:
    """Every image and video below ``root`` (sorted, recursive), lazily; other
    files are appended to ``plan.skipped`` as the walk reaches them."""
    root_real = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                rel = (base / d).relative_to(root).as_posix()
                plan.skipped.append(
                    SkippedFile(file=f"{display_root}/{rel}/", reason="hidden folder")
                )
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = base / name
            rel = p.relative_to(root).as_posix()
            disp = f"{display_root}/{rel}"
            if exclude and p.resolve() in exclude:
                continue
            if p.is_symlink():
                try:
                    p.resolve().relative_to(root_real)
                except ValueError:
                    plan.skipped.append(
                        SkippedFile(file=disp, reason="symlink pointing outside the folder")
                    )
                    continue
            if name.startswith("."):
                plan.skipped.append(SkippedFile(file=disp, reason="hidden file"))
                continue
            suffix = p.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                yield Entry(p, disp, explicit=False)
            elif suffix in VIDEO_SUFFIXES:
                yield Entry(p, disp, explicit=False, is_video=True)
            else:
                plan.skipped.append(
                    SkippedFile(file=disp, reason=f"unsupported file type {suffix or '(none)'}")
                )


def count_folder(root: Path) -> int:
    """How many files ``iter_folder`` may yield (for progress), without storing them."""
    n = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                suffix = os.path.splitext(name)[1].lower()
                n += suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES
    return n


def walk_folder(root: Path, plan: Plan, *, exclude: set[Path], display_root: str) -> None:
    """``iter_folder`` collected into ``plan.entries``."""
    plan.entries.extend(iter_folder(root, plan, exclude=exclude, display_root=display_root))


# ---------------------------------------------------------------- CSV labels
def read_labels_csv(csv_path: Path, roots: list[Path]) -> dict[Path, tuple[str, str]]:
    """``path,label`` rows -> {resolved file: (label, path as written)}.

    Every named file must exist (relative paths are tried against ``roots``
    and the CSV's folder); conflicting labels for one file are an error.
    """
    name = csv_path.name
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
            if "path" not in fields or "label" not in fields:
                raise InvalidInput(
                    f"{name}: needs a header with 'path' and 'label' columns", field="labels"
                )
            rows = [
                (
                    i + 2,
                    (r.get(fields["path"]) or "").strip(),
                    (r.get(fields["label"]) or "").strip(),
                )
                for i, r in enumerate(reader)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InvalidInput(f"{name}: cannot read CSV ({e})", field="labels") from None
    out: dict[Path, tuple[str, str]] = {}
    missing: list[str] = []
    bases = [*roots, csv_path.parent]
    for line, raw, label in rows:
        if not raw:
            raise InvalidInput(f"{name}:{line}: empty path", field="labels")
        if not label:
            continue  # an empty label means "no label": nothing to attach
        cand = Path(raw)
        found: Path | None = None
        if cand.is_absolute():
            found = cand if cand.exists() else None
        else:
            for b in bases:
                if (b / cand).exists():
                    found = b / cand
                    break
        if found is None:
            missing.append(raw)
            continue
        key = found.resolve()
        if key in out and out[key][0] != label:
            raise InvalidInput(
                f"{name}:{line}: {raw} labeled both {out[key][0]!r} and {label!r}", field="labels"
            )
        out[key] = (label, raw)
    if missing:
        raise _missing_error(name, missing)
    return out


# ---------------------------------------------------------------- COCO
def read_coco(path: Path, data: dict[str, Any], display_root: str) -> Plan:
    plan = Plan("coco")
    name = path.name
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
        anns = data.get("annotations", [])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{name}: malformed COCO file ({e!r})", field="file") from None
    for c in cats.values():
        plan.add_label(c)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in anns:
        try:
            by_image.setdefault(int(a["image_id"]), []).append(a)
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(
                f"{name}: annotation without image_id: {a!r}", field="file"
            ) from None
    base = path.parent
    missing: list[str] = []
    seen_ids: set[int] = set()
    for img_id, fname in images:
        if img_id in seen_ids:
            raise InvalidInput(f"{name}: image id {img_id} appears twice", field="file")
        seen_ids.add(img_id)
        cands = [base / fname, base / "images" / fname, base / "images" / Path(fname).name]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            missing.append(fname)
            continue
        entry = Entry(found, f"{display_root}/{fname}", explicit=True)
        group = by_image.get(img_id)
        if group:
            boxes: list[tuple[str, float, float, float, float]] = []
            for a in group:
                cid = a.get("category_id")
                if cid is None or int(cid) not in cats:
                    raise InvalidInput(
                        f"{name}: annotation {a.get('id')} has unknown category_id {cid}",
                        field="file",
                    )
                lab = cats[int(cid)]
                bbox = a.get("bbox")
                if bbox:
                    try:
                        x, y, w, h = (float(v) for v in bbox)
                    except (TypeError, ValueError):
                        raise InvalidInput(
                            f"{name}: annotation {a.get('id')} has a malformed bbox {bbox!r}",
                            field="file",
                        ) from None
                    if w <= 0 or h <= 0:
                        raise InvalidInput(
                            f"{name}: annotation {a.get('id')} has an empty bbox {bbox!r}",
                            field="file",
                        )
                    boxes.append((lab, x, y, x + w, y + h))
                else:  # image-level label (how our COCO export writes classification)
                    entry.label = lab
            if boxes:
                entry.boxes = boxes
        plan.entries.append(entry)
    for img_id in by_image:
        if img_id not in seen_ids:
            raise InvalidInput(
                f"{name}: annotations refer to unknown image id {img_id}", field="file"
            )
    if missing:
        raise _missing_error(name, missing)
    return plan


# ---------------------------------------------------------------- YOLO
def is_yolo(root: Path) -> bool:
    return (root / "images").is_dir() and any((root / f).is_file() for f in YOLO_CLASS_FILES)


def _yolo_names(root: Path) -> list[str]:
    for fname in YOLO_CLASS_FILES:
        p = root / fname
        if not p.is_file():
            continue
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml

                data = yaml.safe_load(p.read_text(encoding="utf-8"))
            except Exception as e:  # noqa: BLE001 - any YAML error is a bad file
                raise InvalidInput(f"{fname}: not valid YAML ({e})", field="file") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, dict):
                try:
                    return [str(names[k]) for k in sorted(names, key=int)]
                except (TypeError, ValueError):
                    raise InvalidInput(
                        f"{fname}: 'names' keys must be integers", field="file"
                    ) from None
            if isinstance(names, list):
                return [str(n) for n in names]
            raise InvalidInput(f"{fname}: no 'names' list", field="file")
        return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    raise InvalidInput(f"{root.name}: YOLO folder without data.yaml or classes.txt", field="file")


def read_yolo(root: Path, display_root: str) -> Plan:
    plan = Plan("yolo")
    names = _yolo_names(root)
    for n in names:
        plan.add_label(n)
    images_dir, labels_dir = root / "images", root / "labels"
    sub = Plan("yolo")
    walk_folder(images_dir, sub, exclude=set(), display_root=f"{display_root}/images")
    plan.skipped.extend(sub.skipped)
    for e in sub.entries:
        if e.is_video:
            plan.skipped.append(SkippedFile(file=e.display, reason="video inside a YOLO folder"))
            continue
        e.explicit = True
        rel = e.path.relative_to(images_dir)
        lab_file = (labels_dir / rel).with_suffix(".txt")
        if lab_file.is_file():
            e.boxes = _yolo_boxes(
                lab_file, names, f"{display_root}/labels/{rel.with_suffix('.txt')}"
            )
            e.norm = True
        plan.entries.append(e)
    return plan


def _yolo_boxes(
    path: Path, names: list[str], disp: str
) -> list[tuple[str, float, float, float, float]]:
    boxes: list[tuple[str, float, float, float, float]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{disp}: cannot read ({e})", field="file") from None
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(parts[0])
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise InvalidInput(f"{disp}:{i}: malformed line {line!r}", field="file") from None
        if not 0 <= cls < len(names):
            raise InvalidInput(f"{disp}:{i}: class {cls} is not in the class list", field="file")
        if len(vals) == 4:
            cx, cy, w, h = vals
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(vals) >= 6 and len(vals) % 2 == 0:  # segmentation polygon -> its box
            xs, ys = vals[0::2], vals[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise InvalidInput(f"{disp}:{i}: malformed line {line!r}", field="file")
        if not (-0.01 <= x1 < x2 <= 1.01 and -0.01 <= y1 < y2 <= 1.01):
            raise InvalidInput(f"{disp}:{i}: box outside the image {line!r}", field="file")
        boxes.append((names[cls], max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)))
    return boxes


# ---------------------------------------------------------------- Label Studio
def _ls_candidates(ref: str, base: Path) -> list[Path]:
    parsed = urllib.parse.urlparse(ref)
    cands: list[Path] = []
    if parsed.scheme in ("http", "https", "s3", "gs"):
        tail = urllib.parse.unquote(Path(parsed.path).name)
        return [base / tail, base / "images" / tail]
    q = urllib.parse.parse_qs(parsed.query)
    if "d" in q:  # /data/local-files/?d=relative/path
        rel = q["d"][0]
        cands += [
            base / rel,
            Path("/") / rel,
            base / Path(rel).name,
            base / "images" / Path(rel).name,
        ]
    path = urllib.parse.unquote(parsed.path)
    if path:
        p = Path(path)
        if p.is_absolute():
            cands.append(p)
        cands += [base / path.lstrip("/"), base / p.name, base / "images" / p.name]
        if p.name.count("-") and "/upload/" in path:  # uploads are renamed <hash>-<name>
            short = p.name.split("-", 1)[1]
            cands += [base / short, base / "images" / short]
    return cands


def read_labelstudio(path: Path, tasks: list[dict[str, Any]], display_root: str) -> Plan:
    plan = Plan("labelstudio")
    name = path.name
    missing: list[str] = []
    for t in tasks:
        data = t.get("data") or {}
        ref = data.get("image") or next(
            (
                v
                for v in data.values()
                if isinstance(v, str)
                and Path(urllib.parse.urlparse(v).path).suffix.lower() in IMAGE_SUFFIXES
            ),
            None,
        )
        if not isinstance(ref, str) or not ref:
            raise InvalidInput(f"{name}: task {t.get('id')} has no image", field="file")
        found = next((c for c in _ls_candidates(ref, path.parent) if c.is_file()), None)
        if found is None:
            missing.append(ref)
            continue
        entry = Entry(found, f"{display_root}/{found.name}", explicit=True)
        anns = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if anns:
            ann = anns[-1]
            boxes: list[tuple[str, float, float, float, float]] = []
            for r in ann.get("result") or []:
                val = r.get("value") or {}
                rtype = r.get("type")
                if rtype == "choices" and val.get("choices"):
                    entry.label = str(val["choices"][0])
                    plan.add_label(entry.label)
                elif rtype == "rectanglelabels" and val.get("rectanglelabels"):
                    try:
                        x, y = float(val["x"]) / 100, float(val["y"]) / 100
                        w, h = float(val["width"]) / 100, float(val["height"]) / 100
                    except (KeyError, TypeError, ValueError):
                        raise InvalidInput(
                            f"{name}: task {t.get('id')}: malformed rectangle {val!r}", field="file"
                        ) from None
                    if w <= 0 or h <= 0:
                        raise InvalidInput(
                            f"{name}: task {t.get('id')}: empty rectangle {val!r}", field="file"
                        )
                    lab = str(val["rectanglelabels"][0])
                    plan.add_label(lab)
                    boxes.append((lab, x, y, min(x + w, 1.0), min(y + h, 1.0)))
            if boxes:
                entry.boxes = boxes
                entry.norm = True
        plan.entries.append(entry)
    if missing:
        raise _missing_error(name, missing)
    return plan
