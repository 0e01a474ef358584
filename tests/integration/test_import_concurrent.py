"""Two processes importing the same folder into the same new dataset at once:
both succeed, every image is added exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.catalog import Catalog
from cloud.core.config import Settings
from tests.conftest import REPO
from tests.unit.test_import import write_jpeg

pytestmark = pytest.mark.integration

CHILD = r"""
import sys
from pathlib import Path
from cloud.catalog import Catalog
from cloud.importers import import_path
r = import_path(Catalog.open(), Path(sys.argv[1]), "shared")
print(r.model_dump_json())
"""


def test_concurrent_imports_into_one_new_dataset(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for i in range(300):
        write_jpeg(root / f"{i:04d}.jpg", 7000 + i, size=16)
    Catalog.open(Settings(data_dir=data_dir)).close()  # schema first; imports race on rows
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("CITYBRAIN_DB_URL", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["added"] for r in reports) == 300
    assert sum(r["existing"] for r in reports) == 300
    assert sorted(r["created"] for r in reports) == [False, True]
    c = Catalog.open(Settings(data_dir=data_dir))
    assert c.list_samples("shared").total == 300
    c.close()
