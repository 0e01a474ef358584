"""``citybrain graph`` / ``citybrain policy`` in-process through ``cloud.cli.main``:
the happy path end to end on a temporary catalog, and bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import cloud.cli as cli
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"
SHA = "0" * 64


def run(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "GROUPS", {"graph": "cloud.cli.graph", "policy": "cloud.cli.policy"})
    monkeypatch.setattr(cli, "COMMAND_MODULES", [])
    monkeypatch.setattr(sys, "argv", ["citybrain", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cb(data_dir, capsys, monkeypatch):
    def call(*args: str, code: int = 0, usage: bool = False) -> tuple[str, str]:
        rc, out, err = run(capsys, monkeypatch, *args)
        assert rc == code, (args, out, err)
        if code == 2 and not usage:  # our errors: exactly one line on stderr
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        return out, err

    return call


def _manifest(tmp_path, **kw) -> str:
    body = {
        "id": "manhole",
        "version": "1.2.0",
        "task": "detect",
        "labels": ["manhole_cover"],
        "input": {"shape": ["N", 3, 64, 64], "preprocess": {"resize": [64, 64]}},
        "postprocess": {"output": "boxes"},
        "scenes": ["street", "sidewalk"],
        "detects": ["manhole_cover_missing"],
        "fps": 2,
        "cost": {"cpu-x86": {"ms_per_frame": 40.0, "mem_mb": 180}},
        "files": {
            "model.onnx": {"sha256": SHA, "size": 1},
            "golden/input.npy": {"sha256": SHA, "size": 1},
            "golden/output.npy": {"sha256": SHA, "size": 1},
        },
    } | kw
    p = tmp_path / f"{body['id']}-{body['version']}.json"
    p.write_text(json.dumps(body))
    return str(p)


def test_graph_and_policy_commands(cb, tmp_path) -> None:
    out, _ = cb("graph", "seed")
    assert "nodes" in out
    cb("graph", "add-camera", "cam-1", "--zone", "sz/longhua/street-12", "--scene", "street")
    cb(
        "graph",
        "add-camera",
        "cam-2",
        "--zone",
        "sz/longhua/seafront",
        "--scene",
        "sea_front,river_bank",
    )
    cb(
        "graph",
        "add-device",
        "edge-1",
        "--target",
        "cpu-x86",
        "--ms-per-s",
        "1000",
        "--mem-mb",
        "4000",
        "--streams",
        "8",
        "--reaches",
        "cam-1",
        "--reaches",
        "cam-2",
    )
    out, _ = cb("graph", "add-algorithm", "--manifest", _manifest(tmp_path))
    assert "manhole 1.2.0 added" in out
    out, err = cb(
        "graph",
        "add-algorithm",
        "--manifest",
        _manifest(tmp_path, id="oil", scenes=["harbour"], detects=["oil_spill"]),
    )
    assert "scene:harbour was not in the ontology" in err
    # a package archive works too (only its manifest is read)
    from edge_agent.protocol import write_package_archive

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text(
        Path(_manifest(tmp_path, id="parking", detects=["illegal_parking"])).read_text()
    )
    write_package_archive(pkg, tmp_path / "parking.tar")
    out, _ = cb("graph", "add-algorithm", "--manifest", str(tmp_path / "parking.tar"))
    assert "parking 1.2.0 added" in out
    out, _ = cb("graph", "applicable", "cam-1")
    assert "camera:cam-1 -> scene:street -> event:manhole_cover_missing -> algorithm:manhole" in out
    out, _ = cb("graph", "applicable", "cam-1", "--json")
    assert json.loads(out)[0]["algorithm"] == "manhole"
    out, _ = cb("graph", "explain", "cam-1", "manhole")
    assert out.startswith("no_policy_event:")
    out, _ = cb(
        "policy",
        "add",
        "--zone",
        "sz/longhua/*",
        "--event",
        "manhole_cover_missing",
        "--priority",
        "3",
        "--hours",
        "0-24",
        "--days",
        "mon-sun",
        "--id",
        "p1",
    )
    assert "policy p1 added" in out
    out, _ = cb("policy", "list")
    assert "p1" in out and "[active]" in out
    out, _ = cb("graph", "explain", "cam-1", "manhole", "--json")
    assert json.loads(out)["reason"] == "applicable"
    out, _ = cb("graph", "explain", "cam-2", "manhole")
    assert out.startswith("no_scene_match:")
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "assignments": [],
                "served": [],
                "unserved": [
                    {
                        "camera": "cam-1",
                        "event": "manhole_cover_missing",
                        "reason": "capacity: edge-1 full",
                    }
                ],
            }
        )
    )
    out, _ = cb("graph", "explain", "cam-1", "manhole", "--plan", str(plan))
    assert out.startswith("capacity:") and "edge-1 full" in out
    dest = tmp_path / "instance.json"
    out, _ = cb("graph", "export-instance", "--out", str(dest))
    doc = json.loads(dest.read_text())
    assert doc["schema"] == "citybrain.schedule-instance/1"
    assert doc["cameras"][0] == {
        "id": "cam-1",
        "zone": "sz/longhua/street-12",
        "scenes": ["street"],
    }
    assert doc["policies"] == [
        {"zone": "sz/longhua/*", "events": ["manhole_cover_missing"], "priority": 3}
    ]
    out, err = cb("graph", "export-instance", "--out", str(dest))
    assert err == ""
    cb("policy", "add", "--zone", "sz/*", "--priority", "1", "--pin", "cam-2:manhole")
    out, err = cb("graph", "export-instance", "--out", str(dest))
    assert "1 active pins/exclusions are not part of the instance format" in err
    out, err = cb("graph", "export-instance", "--out", str(dest), "--embed-extensions")
    assert json.loads(dest.read_text())["extensions"]["citybrain.pins/1"][0]["camera"] == "cam-2"
    ext = tmp_path / "ext.json"
    out, err = cb("graph", "export-instance", "--out", str(dest), "--extensions", str(ext))
    assert "extensions" not in json.loads(dest.read_text()) and err == ""
    assert json.loads(ext.read_text())["citybrain.pins/1"][0]["algorithm"] == "manhole"
    pin_id = next(p["id"] for p in json.loads(cb("policy", "list", "--json")[0]) if p["pins"])
    cb("policy", "remove", pin_id)
    out, _ = cb("graph", "show", "--zone", "sz/longhua")
    assert "cam-1" in out and "algorithms=manhole" in out
    out, _ = cb("graph", "record-scenes", "cam-2", "--score", "park=0.9,plaza=0.2")
    assert "recorded park, plaza; counting scenes: sea_front, river_bank, park" in out
    cb("graph", "reject-scene", "cam-2", "park")
    cb("graph", "confirm-scene", "cam-2", "plaza")
    out, _ = cb("graph", "show", "--zone", "sz/longhua/seafront", "--json")
    links = {s["scene"]: s for s in json.loads(out)[0]["scenes"]}
    assert links["park"]["rejected"] and links["plaza"]["confirmed"]
    out, _ = cb("graph", "set-scenes", "cam-2", "--scene", "sea_front")
    assert "sees sea_front" in out
    cb("policy", "remove", "p1")
    out, _ = cb("policy", "list")
    assert "no policies" in out
    cb("graph", "remove", "camera", "cam-2")
    out, _ = cb("graph", "show", "--json")
    assert json.loads(out)["cameras"] == 1


def test_import_instance_then_export_is_identical(cb, tmp_path) -> None:
    cb("graph", "import-instance", str(EXAMPLE))
    dest = tmp_path / "out.json"
    cb("graph", "export-instance", "--out", str(dest))
    assert json.loads(dest.read_text()) == json.loads(EXAMPLE.read_text())


def test_bad_inputs_exit_2(cb, tmp_path) -> None:
    cb("graph", "seed")
    cb("graph", "add-camera", "cam-1", "--zone", "sz/a", "--scene", "street")
    cases = [
        (("graph", "add-camera", "cam-1", "--zone", "sz/a"), "already exists"),
        (
            ("graph", "add-camera", "cam-2", "--zone", "sz/a", "--scene", "beach"),
            "unknown scene 'beach'",
        ),
        (("graph", "add-camera", "cam-2", "--zone", "sz//a"), "invalid zone path"),
        (("graph", "add-camera", "cam 2", "--zone", "sz/a"), "invalid camera id"),
        (
            (
                "graph",
                "add-device",
                "d",
                "--target",
                "cpu-x86",
                "--ms-per-s",
                "0",
                "--mem-mb",
                "1",
                "--streams",
                "1",
            ),
            "ms_per_s must be a number > 0",
        ),
        (
            (
                "graph",
                "add-device",
                "d",
                "--target",
                "cpu-x86",
                "--ms-per-s",
                "10",
                "--mem-mb",
                "1",
                "--streams",
                "-3",
            ),
            "streams must be an integer > 0",
        ),
        (
            (
                "graph",
                "add-device",
                "d",
                "--target",
                "cpu-x86",
                "--ms-per-s",
                "10",
                "--mem-mb",
                "1",
                "--streams",
                "1",
                "--reaches",
                "ghost",
            ),
            "unknown camera 'ghost'",
        ),
        (("graph", "add-algorithm", "--manifest", str(tmp_path / "missing.json")), "cannot read"),
        (("graph", "applicable", "ghost"), "unknown camera 'ghost'"),
        (("graph", "explain", "cam-1", "ghost"), "unknown algorithm 'ghost'"),
        (("graph", "explain", "cam-1", "ghost", "--at", "yesterday"), "invalid --at"),
        (("graph", "remove", "planet", "x"), "unknown kind 'planet'"),
        (("graph", "show", "--zone", "nowhere"), "unknown zone 'nowhere'"),
        (("graph", "extend", "--file", str(tmp_path / "bad.json")), "not valid JSON"),
        (
            ("policy", "add", "--zone", "sz/*", "--event", "nope", "--priority", "1"),
            "unknown event 'nope'",
        ),
        (
            ("policy", "add", "--zone", "mars/*", "--event", "fire_smoke", "--priority", "1"),
            "matches no known zone",
        ),
        (
            ("policy", "add", "--zone", "sz/*", "--event", "fire_smoke", "--priority", "-2"),
            "priority",
        ),
        (
            (
                "policy",
                "add",
                "--zone",
                "sz/*",
                "--event",
                "fire_smoke",
                "--priority",
                "1",
                "--hours",
                "9-9",
            ),
            "invalid hours",
        ),
        (
            (
                "policy",
                "add",
                "--zone",
                "sz/*",
                "--event",
                "fire_smoke",
                "--priority",
                "1",
                "--days",
                "someday",
            ),
            "invalid days",
        ),
        (("policy", "add", "--zone", "sz/*", "--priority", "1", "--pin", "cam-1"), "invalid --pin"),
        (
            ("policy", "add", "--zone", "sz/*", "--priority", "1", "--pin", "ghost:x"),
            "unknown camera 'ghost'",
        ),
        (
            ("policy", "add", "--zone", "sz/*", "--priority", "1", "--exclude", "x:planet=1"),
            "invalid --exclude",
        ),
        (("policy", "remove", "nope"), "unknown policy 'nope'"),
        (("graph", "record-scenes", "cam-1", "--score", "street"), "invalid --score"),
        (("graph", "record-scenes", "cam-1", "--score", "street=2"), "must be in [0, 1]"),
        (("graph", "record-scenes", "cam-1", "--score", "beach=0.5"), "unknown scene 'beach'"),
        (("graph", "confirm-scene", "cam-1", "park"), "has no scene 'park'"),
    ]
    (tmp_path / "bad.json").write_text("{not json")
    bad_manifest = tmp_path / "m.json"
    bad_manifest.write_text(json.dumps({"id": "x"}))
    cases.append((("graph", "add-algorithm", "--manifest", str(bad_manifest)), "m.json: version"))
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text("[1, 2]")
    cases.append((("graph", "explain", "cam-1", "x", "--plan", str(bad_plan)), "JSON object"))
    for args, msg in cases:
        _, err = cb(*args, code=2)
        assert msg in err, (args, err)
    # click's own usage errors (not a number, missing option) exit 2 as well
    _, err = cb(
        "graph",
        "add-device",
        "d",
        "--target",
        "cpu-x86",
        "--ms-per-s",
        "ten",
        "--mem-mb",
        "1",
        "--streams",
        "1",
        code=2,
        usage=True,
    )
    assert "--ms-per-s" in err
    _, err = cb("graph", "add-camera", "cam-3", code=2, usage=True)
    assert "--zone" in err
    # nothing of the refused commands was stored
    out, _ = cb("graph", "show", "--json")
    stats = json.loads(out)
    assert stats["cameras"] == 1 and stats["devices"] == 0 and stats["policies"] == 0
