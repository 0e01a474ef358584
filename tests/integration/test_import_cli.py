"""``citybrain dataset …`` in a real subprocess: success output, and exit code 2
with exactly one line on stderr for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_DATA
from tests.unit.test_import import write_jpeg

pytestmark = pytest.mark.integration


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("CITYBRAIN_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-c", "from cloud.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point in this process (fast); ``cli`` proves the real one."""
    import contextlib
    import io

    from cloud.cli import main
    from cloud.core.config import get_settings

    assert os.environ["CITYBRAIN_DATA_DIR"] == str(data_dir)
    get_settings.cache_clear()
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["citybrain", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_error_line(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_dataset_cli_happy_path(data_dir: Path, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    for i in range(4):
        write_jpeg(imgs / f"{i}.jpg", 900 + i)
    (imgs / "notes.txt").write_text("x")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n0.jpg,car\n1.jpg,bus\n")
    p = cli(data_dir, "dataset", "import", str(imgs), "--name", "street", "--labels", str(csv))
    assert p.returncode == 0, p.stderr
    assert "created dataset street: 4 new samples" in p.stdout
    assert "notes.txt: unsupported file type .txt" in p.stdout
    p = run(
        data_dir,
        "dataset",
        "import",
        str(TEST_DATA / "vtest_excerpt.avi"),
        "--name",
        "street",
        "--every-k",
        "10",
        "--dedup-threshold",
        "-1",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert (rep["kind"], rep["added"], rep["frames_sampled"]) == ("video", 3, 3)
    p = run(data_dir, "dataset", "import", str(imgs), "--name", "street", "--no-create")
    assert p.returncode == 0 and "0 new samples, 4 already there" in p.stdout
    p = run(data_dir, "dataset", "version", "street", "--note", "first")
    assert p.returncode == 0 and "created street v1: 7 samples, 2 labeled" in p.stdout
    p = run(data_dir, "dataset", "list")
    assert p.returncode == 0 and "street" in p.stdout
    p = run(data_dir, "dataset", "show", "street")
    assert (
        p.returncode == 0 and "samples: 7, labeled: 2" in p.stdout and "v1: 7 samples" in p.stdout
    )
    out = tmp_path / "export"
    p = run(
        data_dir,
        "dataset",
        "export",
        "street",
        "--format",
        "coco",
        "--out",
        str(out),
        "--version",
        "1",
    )
    assert p.returncode == 0, p.stderr
    assert "exported 7 images (2 labeled" in p.stdout
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 7


def test_dataset_cli_bad_input_exit_2_one_line(data_dir: Path, tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", 1)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:-150])
    one_error_line(
        cli(data_dir, "dataset", "import", str(cut), "--name", "x"), "cut.jpg", "truncated"
    )
    bad_video = tmp_path / "cam.avi"
    bad_video.write_bytes(b"not a video at all" * 20)
    one_error_line(run(data_dir, "dataset", "import", str(bad_video), "--name", "x"), "cam.avi")
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"\x08\x01")
    one_error_line(
        run(data_dir, "dataset", "import", str(odd), "--name", "x"), "model.onnx", "unsupported"
    )
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\ngood.jpg,car\nghost.jpg,car\n")
    one_error_line(
        run(data_dir, "dataset", "import", str(tmp_path), "--name", "x", "--labels", str(csv)),
        "ghost.jpg",
        "do not exist",
    )
    z = tmp_path / "slip.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escape.jpg", good.read_bytes())
    one_error_line(run(data_dir, "dataset", "import", str(z), "--name", "x"), "slip.zip", "escapes")
    one_error_line(
        run(data_dir, "dataset", "import", str(good), "--name", "x", "--no-create"),
        "no dataset 'x'",
    )
    one_error_line(
        run(
            data_dir,
            "dataset",
            "import",
            str(good),
            "--name",
            "x",
            "--every-k",
            "2",
            "--every-s",
            "1",
        ),
        "not both",
    )
    one_error_line(run(data_dir, "dataset", "show", "x"), "no dataset 'x'")
    # nothing of the above created anything
    p = run(data_dir, "dataset", "create", "x", "--labels", "car,bus")
    assert p.returncode == 0, p.stderr
    one_error_line(run(data_dir, "dataset", "create", "x"), "dataset 'x' already exists")
    one_error_line(
        run(data_dir, "dataset", "export", "x", "--format", "voc", "--out", str(tmp_path / "o")),
        "voc",
    )
    p = run(data_dir, "dataset", "show", "x")
    assert "samples: 0" in p.stdout


def test_dataset_cli_import_is_recorded_as_a_task(data_dir: Path, tmp_path: Path) -> None:
    from sqlalchemy import select

    from cloud.catalog import Catalog
    from cloud.catalog.models import DatasetSample, Task, TaskKind, TaskStatus
    from cloud.core.config import get_settings

    imgs = tmp_path / "imgs"
    for i in range(3):
        write_jpeg(imgs / f"{i}.jpg", 700 + i)
    p = run(data_dir, "dataset", "import", str(imgs), "--name", "cars", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((imgs / "0.jpg").read_bytes()[:-150])
    one_error_line(run(data_dir, "dataset", "import", str(cut), "--name", "cars"), "cut.jpg")
    get_settings.cache_clear()
    catalog = Catalog.open(get_settings())
    try:
        with catalog.sessions() as s:
            tasks = list(s.scalars(select(Task).order_by(Task.created_at)))
            ds_id = catalog.get_dataset("cars").id
        assert [(t.kind, t.status, t.created_by) for t in tasks] == [
            (TaskKind.IMPORT, TaskStatus.SUCCEEDED, "cli"),
            (TaskKind.IMPORT, TaskStatus.FAILED, "cli"),
        ]
        ok, bad = tasks
        assert rep["task_id"] == ok.id and ok.result == rep and ok.result["added"] == 3
        assert ok.progress == 1.0 and ok.dataset_id == ds_id and ok.finished_at is not None
        assert ok.params["dataset"] == "cars" and ok.params["path"] == str(imgs.resolve())
        assert "3 added" in ok.message
        assert bad.error is not None and "cut.jpg" in bad.error and bad.finished_at is not None
        # the members record the task that added them
        with catalog.sessions() as s:
            by = set(s.scalars(select(DatasetSample.added_by_task)))
        assert by == {ok.id}
    finally:
        catalog.close()
