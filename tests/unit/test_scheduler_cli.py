"""``citybrain schedule``: round trip through files, exit 2 with one line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import scheduler as sch
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    from cloud.cli import main

    monkeypatch.setattr(sys, "argv", ["citybrain", "schedule", *args])
    with pytest.raises(SystemExit) as ei:
        main()
    out = capsys.readouterr()
    return ei.value.code or 0, out.out, out.err


def test_round_trip(tmp_path: Path, monkeypatch, capsys) -> None:
    inst = tmp_path / "inst.json"
    plan = tmp_path / "plan.json"
    code, _, err = run(
        monkeypatch, capsys, "generate", "--cameras", "30", "--algorithms", "8",
        "--devices", "5", "--seed", "3", "--out", str(inst),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(monkeypatch, capsys, "solve", "--instance", str(inst), "--out", str(plan))
    assert code == 0, err
    assert "assignments" in err and "objective" in err
    data = json.loads(plan.read_text())
    assert data["schema"] == "citybrain.schedule-plan/1"
    assert set(data) == {"schema", "assignments", "served", "unserved", "objective", "solver"}
    assert set(data["solver"]) == {"name", "seconds", "optimal", "bound"}
    code, out, err = run(monkeypatch, capsys, "check", "--instance", str(inst), "--plan", str(plan))
    assert code == 0, err
    assert "ok" in out
    # the written files read back exactly
    assert sch.check_plan(sch.load_instance(inst), sch.load_plan(plan)) == []

    # an existing plan is not overwritten without --force
    before = plan.read_text()
    code, _, err = run(monkeypatch, capsys, "solve", "--instance", str(inst), "--out", str(plan))
    assert code == 2 and "already exists" in err
    assert plan.read_text() == before
    code, _, err = run(
        monkeypatch, capsys, "solve", "--instance", str(inst), "--out", str(plan),
        "--solver", "baseline", "--force",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(plan.read_text())["solver"]["name"] == "baseline"

    # re-plan against the previous plan
    plan2 = tmp_path / "plan2.json"
    code, _, err = run(
        monkeypatch, capsys, "solve", "--instance", str(inst), "--out", str(plan2),
        "--previous", str(plan), "--churn-weight", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "churn:" in err


def test_check_reports_violations(tmp_path: Path, monkeypatch, capsys) -> None:
    plan = tmp_path / "plan.json"
    p = sch.solve(sch.load_instance(EXAMPLE), solver="milp").model_dump(by_alias=True)
    p["objective"] = 99
    plan.write_text(json.dumps(p))
    code, out, _ = run(
        monkeypatch, capsys, "check", "--instance", str(EXAMPLE), "--plan", str(plan)
    )
    assert code == 1
    assert "objective_mismatch" in out


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{oops", "not JSON"),
        ('{"schema": "citybrain.schedule-instance/1", "cameras": [{"id": "c", "zone": "z"}], '
         '"devices": [{"id": "d", "target": "t", "capacity": {"ms_per_s": 0, "mem_mb": 1, '
         '"streams": 1}, "cameras": ["c"]}]}', "ms_per_s"),
        ('{"schema": "citybrain.schedule-instance/1", "devices": [{"id": "d", "target": "t", '
         '"capacity": {"ms_per_s": 1, "mem_mb": 1, "streams": 1}, "cameras": ["ghost"]}]}',
         "unknown camera 'ghost'"),
        ('{"schema": "other"}', "schema"),
    ],
)  # fmt: skip
def test_bad_instance_file_exit_2_one_line(
    tmp_path: Path, monkeypatch, capsys, content: str, needle: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "plan.json"
    code, _, err = run(monkeypatch, capsys, "solve", "--instance", str(bad), "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert needle in err and "bad.json" in err
    assert not out.exists()


def test_bad_plan_and_options_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"schema": "citybrain.schedule-plan/1", "objective": "lots"}')
    code, _, err = run(monkeypatch, capsys, "check", "--instance", str(EXAMPLE), "--plan", str(bad))
    assert code == 2 and err.count("\n") == 1 and "plan.json" in err
    code, _, err = run(
        monkeypatch, capsys, "solve", "--instance", str(EXAMPLE), "--out", str(tmp_path / "p"),
        "--solver", "magic",
    )  # fmt: skip
    assert code == 2 and "--solver" in err
    code, _, err = run(
        monkeypatch, capsys, "solve", "--instance", str(tmp_path / "missing.json"),
        "--out", str(tmp_path / "p"),
    )  # fmt: skip
    assert code == 2 and "no such file" in err


@pytest.mark.integration
def test_solve_path_stays_import_light(tmp_path: Path) -> None:
    """The real console script: no torch, ray or fastapi imported to solve a plan."""
    code = (
        "import sys; from cloud.cli import main; sys.argv = ['citybrain', 'schedule', 'solve', "
        f"'--instance', {str(EXAMPLE)!r}, '--out', {str(tmp_path / 'p.json')!r}, "
        "'--solver', 'heuristic']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'fastapi', 'sqlalchemy') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert (tmp_path / "p.json").exists()
