"""``citybrain schedule export-instance`` from the catalog, ``solve``/``check`` with
``--extensions``, and the bad inputs of ``run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import knowledge_graph as kg
import scheduler as sch


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    from cloud.cli import main

    monkeypatch.setattr(sys, "argv", ["citybrain", "schedule", *args])
    with pytest.raises(SystemExit) as ei:
        main()
    out = capsys.readouterr()
    return ei.value.code or 0, out.out, out.err


def _save_graph() -> None:
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    g = kg.CityGraph()
    g.add_scene("street")
    g.add_scene("sea")
    g.add_event("car_event")
    g.add_event("boat")
    cost = {"cpu": {"ms_per_frame": 50, "mem_mb": 100}}
    g.add_algorithm(
        "car", version="1.0.0", detects=["car_event"], scenes=["street"], fps=2, cost=cost
    )
    g.add_algorithm("boat", version="1.0.0", detects=["boat"], scenes=["sea"], fps=2, cost=cost)
    g.add_camera("c1", zone="city/a", scenes=["street"], source="rtsp://c1")
    g.add_camera("c2", zone="city/b", scenes=["sea"], source="rtsp://c2")
    g.add_device("d1", target="cpu", ms_per_s=1000, mem_mb=1000, streams=4, reaches=["c1", "c2"])
    g.add_device("d2", target="cpu", ms_per_s=1000, mem_mb=1000, streams=4, reaches=["c1"])
    g.add_policy(
        kg.Policy(
            id="day", zone="city", events=["car_event"], priority=5, hours=kg.parse_hours("7-19")
        )
    )
    g.add_policy(
        kg.Policy(
            id="rules",
            zone="city",
            priority=2,
            pins=[kg.Pin(camera="c2", algorithm="car")],
            exclusions=[kg.Exclusion(algorithm="car", device="d1")],
        )
    )
    eng = make_engine(get_settings().database_url)
    migrate(eng)
    kg.save(g, eng)
    eng.dispose()


def test_export_solve_check_with_extensions(
    data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    _save_graph()
    inst, ext, plan = tmp_path / "inst.json", tmp_path / "ext.json", tmp_path / "plan.json"
    code, _, err = run(
        monkeypatch, capsys, "export-instance", "--out", str(inst), "--extensions", str(ext),
        "--at", "2026-11-27T10:00",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(inst.read_text())
    assert set(doc) == {"schema", "algorithms", "cameras", "devices", "policies"}  # exactly
    assert sch.parse_instance(doc).policies[0].events == ["car_event"]
    e = json.loads(ext.read_text())
    assert e["citybrain.pins/1"] == [
        {"camera": "c2", "algorithm": "car", "priority": 2, "policy": "rules"}
    ]
    assert e["citybrain.exclusions/1"][0]["device"] == "d1"
    # at night the time-windowed policy is not active: no policy, no demand
    night = tmp_path / "night.json"
    code, _, err = run(
        monkeypatch, capsys, "export-instance", "--out", str(night), "--at", "2026-11-27T22:00"
    )
    assert code == 0 and json.loads(night.read_text())["policies"] == []
    assert "pins/exclusions not written" in err
    # solve with the extensions: car never on d1, the pin on c2 cannot be placed (car is
    # excluded on d1, the only device reaching c2): an unserved entry says why
    code, _, err = run(
        monkeypatch, capsys, "solve", "--instance", str(inst), "--extensions", str(ext),
        "--out", str(plan),
    )  # fmt: skip
    assert code == 0, err
    p = sch.load_plan(plan)
    assert [(a.camera, a.algorithm, a.device) for a in p.assignments] == [("c1", "car", "d2")]
    un = {(u.camera, u.event): u.reason for u in p.unserved}
    assert un[("c2", "pin:car")].startswith("infeasible pin: excluded")
    code, out, _ = run(
        monkeypatch, capsys, "check", "--instance", str(inst), "--plan", str(plan),
        "--extensions", str(ext),
    )  # fmt: skip
    assert code == 0 and "ok" in out
    # the same plan checked without its extensions: the pin entry is not a demand
    code, out, _ = run(monkeypatch, capsys, "check", "--instance", str(inst), "--plan", str(plan))
    assert code == 1 and "unknown_demand" in out
    # nothing is overwritten without --force
    code, _, err = run(monkeypatch, capsys, "export-instance", "--out", str(inst))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export-instance", "--out", "{tmp}/x.json", "--at", "yesterday"], "--at"),
        (
            [
                "solve",
                "--instance",
                "{inst}",
                "--out",
                "{tmp}/p.json",
                "--extensions",
                "{tmp}/no.json",
            ],
            "no such file",
        ),
        (
            ["solve", "--instance", "{inst}", "--out", "{tmp}/p.json", "--extensions", "{bad}"],
            "unknown key",
        ),
        (
            ["solve", "--instance", "{embedded}", "--out", "{tmp}/p.json"],
            "pass them with --extensions",
        ),
        (["run", "--solver", "magic"], "--solver"),
        (["run", "--debounce", "5", "--max-delay", "1"], "--max-delay"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(
    args: list[str], needle: str, data_dir: Path, tmp_path: Path, monkeypatch, capsys: Any
) -> None:
    inst = tmp_path / "inst.json"
    inst.write_text(sch.generate_instance(5, 3, 2, seed=1).model_dump_json(by_alias=True))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pins": []}))
    embedded = tmp_path / "embedded.json"
    embedded.write_text(json.dumps({**json.loads(inst.read_text()), "extensions": {}}))
    argv = [a.format(tmp=tmp_path, inst=inst, bad=bad, embedded=embedded) for a in args]
    code, _, err = run(monkeypatch, capsys, *argv)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err
