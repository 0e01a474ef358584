"""COCO, YOLO, Label Studio and zip imports; COCO/YOLO/CSV export round trips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cloud.catalog import Catalog
from cloud.core.config import Settings
from cloud.errors import Conflict, InvalidInput, UnsafeArchive
from cloud.importers import export_dataset, import_path
from tests.unit.test_import import counts, write_jpeg


@pytest.fixture
def catalog(data_dir: Path) -> Catalog:
    c = Catalog.open(Settings(data_dir=data_dir))
    yield c
    c.close()


def make_coco(root: Path) -> Path:
    for i in range(3):
        write_jpeg(root / "images" / f"{i}.jpg", 10 + i, size=100)
    doc = {
        "images": [
            {"id": i + 1, "file_name": f"images/{i}.jpg", "width": 100, "height": 100}
            for i in range(3)
        ],
        "categories": [{"id": 1, "name": "car"}, {"id": 7, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 20]},
            {"id": 3, "image_id": 2, "category_id": 7},  # image-level label
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_import(catalog: Catalog, tmp_path: Path) -> None:
    path = make_coco(tmp_path / "coco")
    r = import_path(catalog, path, "c")
    assert (r.kind, r.added, r.annotations_added, r.labels_added) == (
        "coco",
        3,
        2,
        ["car", "person"],
    )
    anns = {a.sample_id: a for a in catalog.current_annotations("c").values()}
    boxed = next(a for a in anns.values() if a.boxes)
    assert boxed.boxes == [
        {"x1": 10.0, "y1": 20.0, "x2": 40.0, "y2": 60.0, "label": "car"},
        {"x1": 50.0, "y1": 50.0, "x2": 60.0, "y2": 70.0, "label": "person"},
    ]
    assert sorted(a.label or "" for a in anns.values()) == ["", "person"]
    # the folder holding one COCO file is detected as COCO too; nothing new but
    # the image the COCO file does not list (imported unlabeled, not left out)
    write_jpeg(tmp_path / "coco" / "images" / "extra.jpg", 19, size=100)
    (tmp_path / "coco" / "notes.txt").write_text("x")
    r2 = import_path(catalog, tmp_path / "coco", "c")
    assert (r2.kind, r2.added, r2.annotations_added, r2.annotations_unchanged) == ("coco", 1, 0, 2)
    assert [s.file for s in r2.skipped] == ["coco/notes.txt"]


def test_coco_hostile(catalog: Catalog, tmp_path: Path) -> None:
    path = make_coco(tmp_path / "coco")
    doc = json.loads(path.read_text())
    doc["images"].append({"id": 9, "file_name": "images/missing.jpg"})
    path.write_text(json.dumps(doc))
    with pytest.raises(
        InvalidInput, match=r"instances\.json names files that do not exist: images/missing\.jpg"
    ):
        import_path(catalog, path, "c")
    doc["images"].pop()
    doc["annotations"].append({"id": 9, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]})
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="unknown category_id 99"):
        import_path(catalog, path, "c")
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"instances\.json: not valid JSON"):
        import_path(catalog, path, "c")
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidInput, match="neither a COCO file nor a Label Studio"):
        import_path(catalog, path, "c")
    assert counts(catalog) == (0, 0, 0)


def make_yolo(root: Path) -> Path:
    for i in range(4):
        write_jpeg(root / "images" / ("train" if i < 3 else "val") / f"f{i}.jpg", 20 + i, size=100)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "f0.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.1 0.1\n")
    (root / "labels" / "train" / "f1.txt").write_text("")  # explicitly: no objects
    (root / "labels" / "val" / "f3.txt").write_text("1 0.25 0.75 0.5 0.5\n")
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: car\n  1: person\n"
    )
    return root


def test_yolo_import(catalog: Catalog, tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo")
    r = import_path(catalog, root, "y")
    assert (r.kind, r.added, r.annotations_added, r.labels_added) == (
        "yolo",
        4,
        3,
        ["car", "person"],
    )
    anns = list(catalog.current_annotations("y").values())
    by_n = sorted((len(a.boxes or []), a.boxes) for a in anns)
    assert [n for n, _ in by_n] == [0, 1, 2]
    two = by_n[2][1]
    assert two[0] == {"x1": 40.0, "y1": 30.0, "x2": 60.0, "y2": 70.0, "label": "car"}
    assert catalog.list_samples("y", labeled=False).total == 1  # f2 has no label file
    assert import_path(catalog, root, "y").added == 0


def test_yolo_hostile(catalog: Catalog, tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "f2.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(InvalidInput, match=r"labels/train/f2\.txt:1: malformed line"):
        import_path(catalog, root, "y")
    (root / "labels" / "train" / "f2.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(InvalidInput, match=r"f2\.txt:1: class 5 is not in the class list"):
        import_path(catalog, root, "y")
    (root / "labels" / "train" / "f2.txt").write_text("")
    (root / "data.yaml").write_text("names: [unclosed\n")
    with pytest.raises(InvalidInput, match=r"data\.yaml: not valid YAML"):
        import_path(catalog, root, "y")
    assert counts(catalog) == (0, 0, 0)


def test_label_studio_import(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "ls"
    write_jpeg(root / "street.jpg", 30, size=200)
    write_jpeg(root / "images" / "gate.jpg", 31, size=200)
    write_jpeg(root / "plain.jpg", 32, size=200)
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/3/1a2b3c4d-street.jpg"},
            "annotations": [
                {
                    "result": [{"type": "choices", "value": {"choices": ["busy"]}}],
                    "was_cancelled": False,
                }
            ],
        },
        {
            "id": 2,
            "data": {"image": "/data/local-files/?d=images/gate.jpg"},
            "annotations": [
                {
                    "was_cancelled": True,
                    "result": [{"type": "choices", "value": {"choices": ["quiet"]}}],
                },
                {
                    "result": [
                        {
                            "type": "rectanglelabels",
                            "original_width": 200,
                            "original_height": 200,
                            "value": {
                                "x": 10,
                                "y": 20,
                                "width": 50,
                                "height": 25,
                                "rectanglelabels": ["person"],
                            },
                        }
                    ]
                },
            ],
        },
        {"id": 3, "data": {"image": "plain.jpg"}, "annotations": []},
    ]
    (root / "export.json").write_text(json.dumps(tasks))
    r = import_path(catalog, root / "export.json", "ls")
    assert (r.kind, r.added, r.annotations_added) == ("labelstudio", 3, 2)
    assert set(r.labels_added) == {"busy", "person"}
    anns = list(catalog.current_annotations("ls").values())
    boxes = next(a for a in anns if a.boxes)
    assert boxes.boxes == [{"x1": 20.0, "y1": 40.0, "x2": 120.0, "y2": 90.0, "label": "person"}]
    assert catalog.list_samples("ls", label="busy").total == 1
    tasks.append({"id": 4, "data": {"image": "/data/upload/3/ffff-nowhere.jpg"}})
    (root / "export.json").write_text(json.dumps(tasks))
    with pytest.raises(InvalidInput, match="nowhere.jpg"):
        import_path(catalog, root / "export.json", "ls2")


def test_zip_of_a_folder(catalog: Catalog, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write_jpeg(src / f"d{i % 2}" / f"{i}.jpg", 40 + i)
    z = tmp_path / "pack.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*.jpg")):
            zf.write(p, f"pack/{p.relative_to(src).as_posix()}")
        zf.writestr("pack/readme.md", "hi")
    r = import_path(catalog, z, "z")
    assert (r.kind, r.added) == ("zip:folder", 3)
    assert [s.file for s in r.skipped] == ["pack.zip/readme.md"]
    assert list(catalog.tmp_dir.iterdir()) == []  # extraction dir removed
    assert import_path(catalog, z, "z").added == 0


def test_zip_with_coco_inside(catalog: Catalog, tmp_path: Path) -> None:
    path = make_coco(tmp_path / "coco")
    z = tmp_path / "coco.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(path.parent.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(path.parent).as_posix())
    r = import_path(catalog, z, "zc")
    assert (r.kind, r.added, r.annotations_added) == ("zip:coco", 3, 2)


@pytest.mark.parametrize(
    "member",
    ["../evil.jpg", "ok/../../evil.jpg", "/etc/evil.jpg", "..\\evil.jpg"],
)
def test_zip_slip_is_refused(catalog: Catalog, tmp_path: Path, member: str) -> None:
    img = write_jpeg(tmp_path / "i.jpg", 60).read_bytes()
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good.jpg", img)
        zf.writestr(zipfile.ZipInfo(member), img)
    with pytest.raises(UnsafeArchive, match=r"evil\.zip: member"):
        import_path(catalog, z, "z")
    assert counts(catalog) == (0, 0, 0)
    assert not (tmp_path / "evil.jpg").exists()
    assert list(catalog.tmp_dir.iterdir()) == []


def _symlink_member(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    zf.writestr(info, target)


def test_zip_symlink_escaping_is_refused(catalog: Catalog, tmp_path: Path) -> None:
    img = write_jpeg(tmp_path / "i.jpg", 61).read_bytes()
    for target in ("/etc/passwd", "../../outside.jpg"):
        z = tmp_path / "links.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("a/good.jpg", img)
            _symlink_member(zf, "a/link.jpg", target)
        with pytest.raises(UnsafeArchive, match="symlink 'a/link.jpg' points outside"):
            import_path(catalog, z, "z")
    assert counts(catalog) == (0, 0, 0)
    # a link that stays inside is not followed, and says so
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a/good.jpg", img)
        _symlink_member(zf, "a/link.jpg", "good.jpg")
    r = import_path(catalog, z, "z")
    assert r.added == 1
    assert [(s.file, s.reason) for s in r.skipped] == [
        ("links.zip/a/link.jpg", "symlink not followed")
    ]


def test_not_a_zip(catalog: Catalog, tmp_path: Path) -> None:
    z = tmp_path / "fake.zip"
    z.write_bytes(b"PK nothing")
    with pytest.raises(InvalidInput, match=r"fake\.zip: not a readable zip"):
        import_path(catalog, z, "z")


def test_export_coco_round_trip(catalog: Catalog, tmp_path: Path) -> None:
    import_path(catalog, make_coco(tmp_path / "coco"), "c")
    catalog.create_version("c")
    rep = export_dataset(catalog, "c", "coco", tmp_path / "out", version=1)
    assert (rep.images, rep.labeled, rep.annotations) == (3, 2, 3)
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert {c["name"] for c in doc["categories"]} == {"car", "person"}
    assert all(im["split"] in ("train", "test", None) for im in doc["images"])
    r = import_path(catalog, tmp_path / "out" / "annotations.json", "c2")
    assert (r.added, r.annotations_added) == (3, 2)
    a = {k: (v.label, v.boxes) for k, v in catalog.current_annotations("c").items()}
    b = {k: (v.label, v.boxes) for k, v in catalog.current_annotations("c2").items()}
    assert a == b
    with pytest.raises(Conflict, match="not empty"):
        export_dataset(catalog, "c", "coco", tmp_path / "out")
    with pytest.raises(InvalidInput, match="unknown export format"):
        export_dataset(catalog, "c", "voc", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_export_yolo_round_trip(catalog: Catalog, tmp_path: Path) -> None:
    import_path(catalog, make_yolo(tmp_path / "yolo"), "y")
    rep = export_dataset(catalog, "y", "yolo", tmp_path / "out")
    assert rep.images == 4
    assert (tmp_path / "out" / "data.yaml").is_file()
    assert (tmp_path / "out" / "classes.txt").read_text() == "car\nperson\n"
    r = import_path(catalog, tmp_path / "out", "y2")
    assert (r.kind, r.added, r.annotations_added) == ("yolo", 4, 3)

    def norm(c: str) -> dict[str, list[tuple[str, float, float, float, float]]]:
        return {
            k: sorted(
                (b["label"], round(b["x1"]), round(b["y1"]), round(b["x2"]), round(b["y2"]))
                for b in v.boxes or []
            )
            for k, v in catalog.current_annotations(c).items()
        }

    assert norm("y") == norm("y2")


def test_export_yolo_classification_layout(catalog: Catalog, tmp_path: Path) -> None:
    src = tmp_path / "p"
    for i in range(3):
        write_jpeg(src / f"{i}.jpg", 70 + i)
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\n0.jpg,car\n1.jpg,bus\n")
    import_path(catalog, src, "cls", labels_csv=csv)
    export_dataset(catalog, "cls", "yolo", tmp_path / "out")
    files = sorted(
        p.relative_to(tmp_path / "out").parts[:-1] for p in (tmp_path / "out").rglob("*.jpg")
    )
    assert files == [("train", "bus"), ("train", "car"), ("unlabeled",)]


def test_export_csv_round_trip(catalog: Catalog, tmp_path: Path) -> None:
    src = tmp_path / "p"
    for i in range(4):
        write_jpeg(src / f"{i}.jpg", 80 + i)
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\n0.jpg,car\n1.jpg,bus\n2.jpg,car\n")
    import_path(catalog, src, "a", labels_csv=csv)
    rep = export_dataset(catalog, "a", "csv", tmp_path / "out")
    assert (rep.images, rep.labeled) == (4, 3)
    lines = (tmp_path / "out" / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,sample_id,source,boxes" and len(lines) == 5
    r = import_path(
        catalog, tmp_path / "out" / "images", "b", labels_csv=tmp_path / "out" / "labels.csv"
    )
    assert (r.added, r.annotations_added) == (4, 3)
    a = {k: v.label for k, v in catalog.current_annotations("a").items()}
    b = {k: v.label for k, v in catalog.current_annotations("b").items()}
    assert a == b


def test_zip_bomb_is_refused(data_dir: Path, tmp_path: Path) -> None:
    from cloud.errors import PayloadTooLarge

    c = Catalog.open(Settings(data_dir=data_dir, max_upload_mb=1))  # archives: <= 20 MiB
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.jpg", b"\0" * (21 << 20))
    assert z.stat().st_size < 1 << 20
    with pytest.raises(PayloadTooLarge, match=r"bomb\.zip: unpacks to more than 20 MiB"):
        import_path(c, z, "z")
    assert list(c.tmp_dir.iterdir()) == []
    assert counts(c) == (0, 0, 0)
    c.close()
