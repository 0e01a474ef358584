"""A killed import leaves the catalog consistent; the rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud.catalog import Catalog
from cloud.catalog.models import Dataset, DatasetSample, Sample
from cloud.core.config import Settings
from cloud.importers import import_path
from tests.conftest import REPO
from tests.unit.test_import import write_jpeg

pytestmark = pytest.mark.integration

N = 1100  # > 2 commit batches of 500

CHILD = r"""
import sys, time
from pathlib import Path
from cloud.catalog import Catalog
from cloud.importers import _import, import_path

stage = sys.argv[2]
said = False

def stop_here(msg):
    global said
    if not said:
        said = True
        print("KILL-ME", msg, flush=True)
        time.sleep(30)  # the parent kills us here

def progress(fraction, msg):
    if stage == "read" and msg.startswith("read "):
        stop_here(msg)  # inside the read loop: blobs written, no rows

def after_batch(done, total):
    if stage == "commit":
        stop_here(f"committed {done}/{total}")  # inside the open transaction

_import._after_commit_batch = after_batch
import_path(Catalog.open(), Path(sys.argv[1]), "crash", progress=progress)
print("FINISHED", flush=True)
"""


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "many"
    for i in range(N):
        write_jpeg(root / f"{i // 100:02d}" / f"{i:05d}.jpg", 10_000 + i, size=16)
    return root


@pytest.mark.parametrize("stage", ["read", "commit"])
def test_sigkill_mid_import_leaves_no_partial_rows(
    data_dir: Path, big_folder: Path, stage: str
) -> None:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("CITYBRAIN_DB_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(big_folder), stage],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("KILL-ME"), (line, proc.stderr.read() if proc.stderr else "")
        if stage == "commit":
            assert "committed 500/" in line  # a batch is in the open transaction
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    catalog = Catalog.open(Settings(data_dir=data_dir))
    try:
        with catalog.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Dataset)) == 0
            assert s.scalar(select(func.count()).select_from(Sample)) == 0
            assert s.scalar(select(func.count()).select_from(DatasetSample)) == 0
        r = import_path(catalog, big_folder, "crash")  # the rerun completes
        assert (r.created, r.added, r.existing, r.skipped) == (True, N, 0, [])
        assert catalog.list_samples("crash").total == N
        with catalog.sessions() as s:
            for sid in s.scalars(select(Sample.id).limit(50)):
                catalog.blobs.verify(sid)  # blobs written before the kill are intact
    finally:
        catalog.close()
