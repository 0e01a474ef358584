"""import_path: kinds, all-or-nothing, re-import, and every hostile input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from cloud.catalog import Catalog
from cloud.catalog.models import Annotation, Sample
from cloud.core.config import Settings
from cloud.errors import InvalidInput, NotFound
from cloud.importers import import_path
from tests.conftest import TEST_DATA

VIDEO = TEST_DATA / "vtest_excerpt.avi"  # 30 frames, 10 fps


def write_jpeg(path: Path, seed: int, size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return path


@pytest.fixture
def catalog(data_dir: Path) -> Catalog:
    c = Catalog.open(Settings(data_dir=data_dir))
    yield c
    c.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(6):
        write_jpeg(root / ("a" if i < 3 else "b/c") / f"img{i}.jpg", i)
    ok, png = cv2.imencode(".png", np.full((20, 30, 3), 7, np.uint8))
    (root / "flat.png").write_bytes(png.tobytes())
    return root


def counts(catalog: Catalog) -> tuple[int, int, int]:
    with catalog.sessions() as s:
        return (
            len(catalog.list_datasets()),
            s.scalar(select(func.count()).select_from(Sample)) or 0,
            s.scalar(select(func.count()).select_from(Annotation)) or 0,
        )


def test_folder_import_is_recursive_and_reimport_adds_nothing(
    catalog: Catalog, folder: Path
) -> None:
    events: list[tuple[float, str]] = []
    r = import_path(catalog, folder, "photos", progress=lambda f, m: events.append((f, m)))
    assert (r.kind, r.created, r.added, r.existing, r.skipped) == ("folder", True, 7, 0, [])
    assert events[0][0] == 0.0 and events[-1][0] == 1.0
    assert all(b[0] >= a[0] for a, b in zip(events, events[1:], strict=False))
    sources = {v.source for v in catalog.list_samples("photos").items}
    assert "photos/b/c/img4.jpg" in sources and "photos/flat.png" in sources
    png = next(v for v in catalog.list_samples("photos").items if v.source.endswith(".png"))
    assert (png.media_type, png.width, png.height) == ("image/png", 30, 20)
    before = counts(catalog)
    r2 = import_path(catalog, folder, "photos")
    assert (r2.created, r2.added, r2.existing) == (False, 0, 7)
    assert counts(catalog) == before


def test_single_image_and_no_create(catalog: Catalog, tmp_path: Path) -> None:
    img = write_jpeg(tmp_path / "one.jpg", 1)
    with pytest.raises(NotFound, match="no dataset 'x'"):
        import_path(catalog, img, "x", create=False)
    r = import_path(catalog, img, "x")
    assert (r.kind, r.added) == ("image", 1)
    r = import_path(catalog, img, "x", create=False)
    assert (r.added, r.existing) == (0, 1)


def test_corrupt_and_unsupported_files_in_a_folder_are_skipped_with_reason(
    catalog: Catalog, folder: Path
) -> None:
    good = (folder / "a" / "img0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("hello")
    (folder / "broken.avi").write_bytes(b"RIFF....AVI garbage" * 10)
    write_jpeg(folder / ".cache" / "thumb.jpg", 99)
    r = import_path(catalog, folder, "photos")
    assert r.added == 7
    reasons = {s.file: s.reason for s in r.skipped}
    assert set(reasons) == {
        "photos/truncated.jpg",
        "photos/garbage.png",
        "photos/empty.jpg",
        "photos/notes.txt",
        "photos/broken.avi",
        "photos/.cache/",
    }
    assert reasons["photos/.cache/"] == "hidden folder"
    assert "truncated" in reasons["photos/truncated.jpg"]
    assert "unsupported file type .txt" in reasons["photos/notes.txt"]
    assert "video" in reasons["photos/broken.avi"]


def test_explicit_corrupt_image_is_an_error_and_writes_nothing(
    catalog: Catalog, tmp_path: Path
) -> None:
    good = write_jpeg(tmp_path / "g.jpg", 3).read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good[:-200])
    with pytest.raises(InvalidInput, match=r"cut\.jpg: corrupt or truncated"):
        import_path(catalog, bad, "x")
    assert counts(catalog) == (0, 0, 0)


def test_unsupported_single_file_and_missing_path(catalog: Catalog, tmp_path: Path) -> None:
    doc = tmp_path / "report.pdf"
    doc.write_bytes(b"%PDF-1.4")
    with pytest.raises(InvalidInput, match=r"report\.pdf: unsupported file type \.pdf"):
        import_path(catalog, doc, "x")
    with pytest.raises(InvalidInput, match="no such file"):
        import_path(catalog, tmp_path / "nope", "x")
    assert counts(catalog) == (0, 0, 0)


def test_undecodable_video_is_an_error(catalog: Catalog, tmp_path: Path) -> None:
    v = tmp_path / "cam.mp4"
    v.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    with pytest.raises(InvalidInput, match=r"cam\.mp4: (cannot open video|video has no decodable)"):
        import_path(catalog, v, "x")
    assert counts(catalog) == (0, 0, 0)


def test_video_sampling_and_near_duplicate_removal(catalog: Catalog) -> None:
    r = import_path(catalog, VIDEO, "v", every_k=5, dedup_threshold=-1)
    assert (r.kind, r.frames_sampled, r.duplicates_removed, r.added) == ("video", 6, 0, 6)
    frames = sorted(v.frame_index for v in catalog.list_samples("v").items)
    assert frames == [0, 5, 10, 15, 20, 25]
    item = catalog.list_samples("v").items[0]
    assert item.source == "vtest_excerpt.avi#frame=0" and (item.width, item.height) == (384, 288)
    # every_s=1.0 at 10 fps = every 10th frame; re-import of the same frames adds nothing
    r2 = import_path(catalog, VIDEO, "v", every_s=1.0, dedup_threshold=-1)
    assert (r2.frames_sampled, r2.added, r2.existing) == (3, 0, 3)
    # a huge threshold keeps only the first frame: the rest are near-duplicates
    r3 = import_path(catalog, VIDEO, "v2", every_k=5, dedup_threshold=64)
    assert (r3.frames_sampled, r3.duplicates_removed, r3.added) == (6, 5, 1)
    # a static camera: consecutive frames are near-duplicates at the default threshold
    r4 = import_path(catalog, VIDEO, "v3", every_k=1)
    assert r4.frames_sampled == 30 and r4.duplicates_removed > 0
    assert r4.added == 30 - r4.duplicates_removed
    with pytest.raises(InvalidInput, match="not both"):
        import_path(catalog, VIDEO, "v", every_k=2, every_s=1.0)
    with pytest.raises(InvalidInput, match="every_k"):
        import_path(catalog, VIDEO, "v", every_k=0)


def test_labels_csv_attaches_labels(catalog: Catalog, folder: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na/img0.jpg,car\na/img1.jpg,bus\nb/c/img3.jpg,car\nflat.png,\n")
    r = import_path(catalog, folder, "photos", labels_csv=csv)
    assert (r.added, r.annotations_added, r.labels_added) == (7, 3, ["car", "bus"])
    assert catalog.list_samples("photos", label="car").total == 2
    ds = catalog.get_dataset("photos")
    assert ds.labels == ["car", "bus"]
    anns = catalog.current_annotations("photos")
    assert {a.source.value for a in anns.values()} == {"import"}
    r2 = import_path(catalog, folder, "photos", labels_csv=csv)
    assert (r2.added, r2.annotations_added, r2.annotations_unchanged) == (0, 0, 3)


def test_csv_naming_missing_files_is_an_error_naming_them(
    catalog: Catalog, folder: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na/img0.jpg,car\nghost1.jpg,car\nsub/ghost2.jpg,bus\n")
    with pytest.raises(
        InvalidInput,
        match=r"labels\.csv names files that do not exist: ghost1\.jpg, sub/ghost2\.jpg",
    ):
        import_path(catalog, folder, "photos", labels_csv=csv)
    assert counts(catalog) == (0, 0, 0)
    assert list(catalog.blobs.iter_ids()) == []  # checked before any image was read


def test_csv_structure_errors(catalog: Catalog, folder: Path, tmp_path: Path) -> None:
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,class\na/img0.jpg,car\n")
    with pytest.raises(InvalidInput, match="'path' and 'label'"):
        import_path(catalog, folder, "p", labels_csv=bad_header)
    conflict = tmp_path / "c.csv"
    conflict.write_text("path,label\na/img0.jpg,car\na/img0.jpg,bus\n")
    with pytest.raises(InvalidInput, match="labeled both"):
        import_path(catalog, folder, "p", labels_csv=conflict)
    outside = tmp_path / "o.csv"
    write_jpeg(tmp_path / "elsewhere" / "x.jpg", 50)
    outside.write_text("path,label\nelsewhere/x.jpg,car\n")
    with pytest.raises(InvalidInput, match="not part of this import"):
        import_path(catalog, folder, "p", labels_csv=outside)
    with pytest.raises(InvalidInput, match="labels CSV not found"):
        import_path(catalog, folder, "p", labels_csv=tmp_path / "missing.csv")
    assert counts(catalog) == (0, 0, 0)


def test_csv_labeling_a_corrupt_file_fails_the_whole_import(
    catalog: Catalog, folder: Path, tmp_path: Path
) -> None:
    (folder / "bad.jpg").write_bytes(b"nope")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na/img0.jpg,car\nbad.jpg,bus\n")
    with pytest.raises(InvalidInput, match=r"bad\.jpg"):
        import_path(catalog, folder, "photos", labels_csv=csv)
    assert counts(catalog) == (0, 0, 0)


def test_csv_label_on_a_video_labels_its_frames(catalog: Catalog, tmp_path: Path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text(f"path,label\n{VIDEO},street\n")
    r = import_path(catalog, VIDEO, "v", labels_csv=csv, every_k=10, dedup_threshold=-1)
    assert (r.added, r.annotations_added) == (3, 3)
    assert catalog.list_samples("v", label="street").total == 3


def test_imported_labels_never_overwrite_existing_ones(
    catalog: Catalog, folder: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na/img0.jpg,car\n")
    import_path(catalog, folder, "photos", labels_csv=csv)
    sid = catalog.list_samples("photos", label="car").items[0].id
    catalog.add_labels("photos", ["bus"])
    human = catalog.annotate("photos", sid, label="bus", annotator="alice")
    r = import_path(catalog, folder, "photos", labels_csv=csv)
    assert r.annotations_added == 0
    assert [s.file for s in r.skipped] == ["photos/a/img0.jpg"]
    assert "never overwritten" in r.skipped[0].reason
    assert catalog.current_annotations("photos")[sid].id == human.id
    assert [a.label for a in catalog.annotation_history("photos", sid)] == ["car", "bus"]


def test_duplicate_content_within_one_import(catalog: Catalog, tmp_path: Path) -> None:
    root = tmp_path / "dups"
    write_jpeg(root / "x.jpg", 9)
    (root / "copy.jpg").write_bytes((root / "x.jpg").read_bytes())
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\nx.jpg,car\ncopy.jpg,bus\n")
    r = import_path(catalog, root, "d", labels_csv=csv)
    assert (r.added, r.existing, r.annotations_added) == (1, 1, 1)
    assert len(r.skipped) == 1 and "already labeled" in r.skipped[0].reason


def test_symlink_out_of_folder_is_skipped(catalog: Catalog, folder: Path, tmp_path: Path) -> None:
    secret = write_jpeg(tmp_path / "secret" / "s.jpg", 77)
    (folder / "link.jpg").symlink_to(secret)
    r = import_path(catalog, folder, "photos")
    assert r.added == 7
    assert [(s.file, s.reason) for s in r.skipped] == [
        ("photos/link.jpg", "symlink pointing outside the folder")
    ]


def test_invalid_dataset_name_and_task(catalog: Catalog, folder: Path) -> None:
    with pytest.raises(InvalidInput, match="dataset name"):
        import_path(catalog, folder, "../evil")
    with pytest.raises(NotFound, match="no task"):
        import_path(catalog, folder, "photos", task_id="0" * 32)
    assert counts(catalog)[0] == 0


def test_import_records_task_lineage(catalog: Catalog, folder: Path) -> None:
    from cloud.catalog.models import DatasetSample, Task, TaskKind

    with catalog.transaction() as s:
        task = Task(kind=TaskKind.IMPORT, title="import photos")
        s.add(task)
        s.flush()
        tid = task.id
    r = import_path(catalog, folder, "photos", task_id=tid)
    assert r.task_id == tid
    edges = {(e.direction, e.entity, e.role) for e in catalog.lineage(task_id=tid)}
    assert edges == {("output", "dataset", "import"), ("input", "file", "folder")}
    with catalog.sessions() as s:
        owners = set(s.scalars(select(DatasetSample.added_by_task)))
    assert owners == {tid}


def test_progress_callback_may_write_the_catalog(catalog: Catalog, folder: Path) -> None:
    """Progress is reported outside the commit transaction: a callback that
    writes the task record (as workers do) must not wait on the import's lock."""
    from cloud.catalog.models import Task, TaskKind

    with catalog.transaction() as s:
        task = Task(kind=TaskKind.IMPORT)
        s.add(task)
        s.flush()
        tid = task.id
    seen: list[float] = []

    def progress(fraction: float, msg: str) -> None:
        with catalog.transaction() as s:
            row = s.get(Task, tid)
            assert row is not None
            row.progress, row.message = fraction, msg
        seen.append(fraction)

    r = import_path(catalog, folder, "photos", progress=progress, task_id=tid)
    assert r.added == 7 and seen[-1] == 1.0
    with catalog.sessions() as s:
        assert s.get(Task, tid).progress == 1.0  # type: ignore[union-attr]
