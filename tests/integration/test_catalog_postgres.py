"""The catalog and the importer against a real PostgreSQL (same code as SQLite).

Skips only when the machine has no PostgreSQL client installed; with ``psql``
on the PATH an unreachable server is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from cloud.catalog import Catalog
from cloud.catalog.models import AnnotationKind, AnnotationSource, Split
from cloud.core.config import Settings
from cloud.errors import Conflict
from cloud.importers import export_dataset, import_path
from tests.conftest import TEST_DATA
from tests.unit.test_import import write_jpeg

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

PG_URL = os.environ.get("CITYBRAIN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    if shutil.which("psql") is None:
        pytest.skip("PostgreSQL is not installed on this machine (no psql)")
    import psycopg

    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is installed but {PG_URL} does not answer: {e}")
    name = f"cb_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_URL.rsplit("/", 1)[0] + "/" + name
        data = tmp_path / "data"
        data.mkdir()
        yield Settings(data_dir=data, db_url=url)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_migrate_import_annotate_version_query_on_postgres(
    pg_settings: Settings, tmp_path: Path
) -> None:
    catalog = Catalog.open(pg_settings)
    again = Catalog.open(pg_settings)  # second migrate: no-op under the advisory lock
    again.close()
    try:
        assert catalog.engine.dialect.name == "postgresql"
        root = tmp_path / "imgs"
        for i in range(12):
            write_jpeg(root / f"cam{i % 3}" / f"{i}.jpg", 500 + i)
        (root / "bad.jpg").write_bytes(b"broken")
        csv = tmp_path / "l.csv"
        csv.write_text("path,label\ncam0/0.jpg,car\ncam1/1.jpg,bus\ncam0/3.jpg,car\n")
        r = import_path(catalog, root, "pg", labels_csv=csv)
        assert (r.added, r.annotations_added, len(r.skipped)) == (12, 3, 1)
        assert import_path(catalog, root, "pg", labels_csv=csv).added == 0
        rv = import_path(
            catalog, TEST_DATA / "vtest_excerpt.avi", "pg", every_k=10, dedup_threshold=-1
        )
        assert rv.added == 3
        with pytest.raises(Conflict):
            catalog.create_dataset("pg")

        assert catalog.list_samples("pg").total == 15
        assert catalog.list_samples("pg", label="car").total == 2
        assert catalog.list_samples("pg", labeled=False).total == 12
        assert catalog.list_samples("pg", source="imgs/cam0/").total == 4
        ids, cursor = [], None
        while True:
            page = catalog.list_samples("pg", limit=4, after=cursor)
            ids += [v.id for v in page.items]
            if (cursor := page.next_cursor) is None:
                break
        assert len(ids) == len(set(ids)) == 15
        assert ids == [v.id for v in catalog.list_samples("pg", limit=100).items]

        sid = catalog.list_samples("pg", label="car").items[0].id
        first = catalog.current_annotations("pg")[sid]
        boxes = catalog.annotate(
            "pg",
            sid,
            boxes=[{"x1": 1, "y1": 2, "x2": 30, "y2": 40, "label": "car", "score": 0.5}],
            annotator="alice",
        )
        assert boxes.supersedes_id == first.id and boxes.kind == AnnotationKind.BOXES
        cur = catalog.current_annotations("pg")[sid]
        assert cur.boxes == [
            {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "label": "car", "score": 0.5}
        ]
        assert cur.source == AnnotationSource.HUMAN and cur.created_at.tzinfo is not None
        assert cur.created_at.utcoffset() == UTC.utcoffset(None)

        v1 = catalog.create_version("pg", note="pg")
        assert (v1.number, v1.sample_count, v1.labeled_count) == (1, 15, 3)
        splits = [it.split for it in catalog.iter_items("pg", 1) if it.annotation_id]
        assert all(s in (Split.TRAIN, Split.TEST) for s in splits)
        stats = catalog.dataset_stats("pg")
        assert stats.samples == 15 and stats.labeled == 3 and stats.latest_version == 1

        out = export_dataset(catalog, "pg", "coco", tmp_path / "out", version=1)
        assert (out.images, out.labeled) == (15, 3)
    finally:
        catalog.close()
