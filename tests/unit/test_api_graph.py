"""Graph and assignments routes in-process (``/api/v1/graph/...``,
``/api/v1/assignments...``) and their console pages: the zone tree and a zone's
cameras with scenes and justified algorithms, the saved / preview plan per device with
its utilisation, "why?" for served and unserved demands, scene confirm/reject by
operators, roles, and hostile inputs (unknown zone/camera/event, corrupt state file,
a saved plan naming a device that left the graph)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import knowledge_graph as kg
import scheduler as sch
from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth
from tests.conftest import REPO

EXAMPLE = REPO.parent / "shared" / "schemas" / "schedule-instance.example.json"


class Env:
    def __init__(self, root: Path) -> None:
        self.settings = Settings(
            data_dir=root / "data",
            redis_url=NO_REDIS,
            mqtt_url="mqtt://127.0.0.1:1",
            bootstrap_token=ADMIN_TOKEN,
        )
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        self.engine = self.app.state.catalog.engine
        self.tok = {}
        for role in ("viewer", "operator"):
            r = self.client.post(
                "/api/v1/tokens", json={"name": role, "role": role}, headers=auth(ADMIN_TOKEN)
            )
            assert r.status_code == 201, r.text
            self.tok[role] = r.json()["token"]
        g = kg.load(self.engine)
        g.seed()
        kg.import_instance(json.loads(EXAMPLE.read_text()), graph=g, source="example")
        # an inferred scene below the threshold and one above it
        g.add_camera("cam-004", zone="longhua/street-12/north", scenes=[])
        g.record_inferred_scenes("cam-004", {"street": 0.91, "sidewalk": 0.2})
        g.add_edge(kg.EdgeType.REACHES, "edge-02", "cam-004")
        kg.save(g, self.engine)

    def get(self, url: str, role: str = "viewer"):  # type: ignore[no-untyped-def]
        return self.client.get(url, headers=auth(self.tok[role]))

    @property
    def state_file(self) -> Path:
        return self.settings.data_dir / "replan-state.json"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_zone_tree_and_zone_detail(env: Env) -> None:
    r = env.get("/api/v1/graph/zones")
    assert r.status_code == 200, r.text
    tree = r.json()
    zones = {z["path"]: z for z in tree["zones"]}
    assert zones["longhua"]["parent"] is None and zones["longhua"]["depth"] == 0
    assert zones["longhua/street-12"]["parent"] == "longhua"
    assert zones["longhua/street-12"]["cameras"] == 1
    assert zones["longhua/street-12"]["cameras_total"] == 2  # cam-004 is in north below
    assert zones["longhua"]["cameras_total"] == 3
    assert tree["stats"]["cameras"] == 4
    # depth-first: a zone comes right before its sub-zones
    order = [z["path"] for z in tree["zones"]]
    assert order.index("longhua/street-12") + 1 == order.index("longhua/street-12/north")

    r = env.get("/api/v1/graph/zones/longhua")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["total"] == 3 and d["children"] == ["longhua/seafront-3", "longhua/street-12"]
    cams = {c["camera"]: c for c in d["cameras"]}
    [alg] = cams["cam-001"]["algorithms"]
    assert alg["algorithm"] == "manhole_missing"
    [j] = alg["justifications"]
    assert j["path"] == [
        "camera:cam-001",
        "scene:street",
        "event:manhole_cover_missing",
        "algorithm:manhole_missing",
    ]
    scenes = {s["scene"]: s for s in cams["cam-004"]["scenes"]}
    assert scenes["street"]["source"] == "inferred" and scenes["street"]["counts"]
    assert scenes["sidewalk"]["confidence"] == pytest.approx(0.2)
    assert not scenes["sidewalk"]["counts"]
    assert cams["cam-004"]["devices"] == ["edge-02"]
    # paging
    r = env.get("/api/v1/graph/zones/longhua?offset=1&limit=1")
    assert r.json()["total"] == 3 and len(r.json()["cameras"]) == 1


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/graph/zones/nowhere",
        "/api/v1/graph/zones/longhua/*",
        "/api/v1/graph/zones/..%2F..%2Fetc",
        "/api/v1/assignments/why?camera=cam-404&event=person_in_water",
        "/api/v1/assignments/why?camera=cam-001&event=alien_landing",
        "/api/v1/graph/explain?camera=cam-001&algorithm=nope",
    ],
)
def test_unknown_things_are_404(env: Env, url: str) -> None:
    r = env.get(url)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] == "NotFound"


def test_auth_is_required(env: Env) -> None:
    assert env.client.get("/api/v1/graph/zones").status_code == 401
    assert env.client.get("/api/v1/assignments").status_code == 401


def test_no_saved_plan_then_preview(env: Env) -> None:
    r = env.get("/api/v1/assignments")
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["source"]["kind"] == "none" and v["solver"] is None
    assert {d["device"] for d in v["devices"]} == {"edge-01", "edge-02"}  # empty devices
    assert all(d["compute"]["used"] == 0 for d in v["devices"])

    r = env.get("/api/v1/assignments?preview=true")
    v = r.json()
    assert v["source"]["kind"] == "preview" and "not saved" in v["source"]["label"]
    assert not env.state_file.exists()  # a preview is never saved
    assert v["solver"]["optimal"] and v["solver"]["gap"] == pytest.approx(0.0)
    devs = {d["device"]: d for d in v["devices"]}
    placed = {(a["camera"], a["algorithm"]): d for d, x in devs.items() for a in x["assignments"]}
    assert placed[("cam-001", "manhole_missing")] in ("edge-01", "edge-02")
    assert placed[("cam-002", "drowning")] == "edge-01"  # only gpu-sm87 can run it
    assert placed[("cam-003", "lobby_cargo")] == "edge-02"
    # utilisation = sum fps * ms_per_frame, distinct models' memory, distinct cameras
    e1 = devs["edge-01"]
    ms = {"manhole_missing": 2 * 6.0, "drowning": 5 * 9.0}
    mem = {"manhole_missing": 420, "drowning": 600}
    on1 = [a["algorithm"] for a in e1["assignments"]]
    assert e1["compute"]["used"] == pytest.approx(sum(ms[a] for a in on1))
    assert e1["memory"]["used"] == pytest.approx(sum(mem[a] for a in set(on1)))
    assert e1["streams"]["used"] == len({a["camera"] for a in e1["assignments"]})
    assert e1["compute"]["fraction"] == pytest.approx(e1["compute"]["used"] / 1000.0)
    # what each assignment serves
    [a2] = [a for a in e1["assignments"] if a["camera"] == "cam-002"]
    assert a2["events"] == ["person_in_water"]
    reasons = {(u["camera"], u["event"]): u["reason"] for u in v["unserved"]}
    assert "no scene match" in reasons[("cam-001", "person_in_water")]
    # filters
    r = env.get("/api/v1/assignments?preview=true&camera=cam-003")
    assert [d["device"] for d in r.json()["devices"]] == ["edge-02"]


def _save_plan(env: Env, assignments: list[tuple[str, str, str]], served, unserved) -> None:  # type: ignore[no-untyped-def]
    versions = {"manhole_missing": "1.2.0", "drowning": "0.9.1", "lobby_cargo": "2.0.0"}
    plan = sch.Plan.model_validate(
        {
            "assignments": [
                {"camera": c, "algorithm": a, "version": versions.get(a, "1.0.0"), "device": d}
                for c, a, d in assignments
            ],
            "served": [{"camera": c, "event": e} for c, e in served],
            "unserved": [{"camera": c, "event": e, "reason": r} for c, e, r in unserved],
            "objective": 3.0 * len(served),
            "solver": {"name": "heuristic", "seconds": 0.1, "optimal": False, "bound": 12.0},
        }
    )
    sch.save_state(env.state_file, sch.PlannerState(plan=plan, graph_revision=7))


def test_saved_plan_is_shown_with_why(env: Env) -> None:
    _save_plan(
        env,
        [("cam-001", "manhole_missing", "edge-02"), ("cam-002", "drowning", "edge-01")],
        [("cam-001", "manhole_cover_missing"), ("cam-002", "person_in_water")],
        [("cam-003", "cargo_carried", "capacity: reachable devices have no room left")],
    )
    v = env.get("/api/v1/assignments").json()
    assert v["source"]["kind"] == "saved" and v["source"]["graph_revision"] == 7
    assert "the graph is now at revision 1" in v["source"]["label"]
    assert v["solver"]["gap"] == pytest.approx((12 - 6) / 12)
    devs = {d["device"]: d for d in v["devices"]}
    assert devs["edge-02"]["compute"]["used"] == pytest.approx(2 * 40.0)  # cpu-x86 cost
    assert devs["edge-02"]["memory"]["used"] == pytest.approx(180)

    w = env.get("/api/v1/assignments/why?camera=cam-001&event=manhole_cover_missing").json()
    assert w["status"] == "served"
    assert w["served_by"] == [
        {"algorithm": "manhole_missing", "version": "1.2.0", "device": "edge-02"}
    ]
    verdicts = {d["device"]: d for d in w["devices"]}
    assert verdicts["edge-02"]["chosen"]
    assert "decoded on edge-02" in verdicts["edge-01"]["verdict"]  # why not the other
    [x] = w["explanations"]
    assert x["reason"] == "placed" and x["device"] == "edge-02"

    w = env.get("/api/v1/assignments/why?camera=cam-003&event=cargo_carried").json()
    assert w["status"] == "unserved" and w["reason"].startswith("capacity")
    assert "not watched" in w["sentence"]
    [x] = w["explanations"]
    assert x["algorithm"] == "lobby_cargo" and x["reason"] == "capacity"
    assert [d["device"] for d in w["devices"]] == ["edge-02"]
    assert "would fit" in w["devices"][0]["verdict"]  # the saved plan left room

    # a demand no policy asks for
    w = env.get("/api/v1/assignments/why?camera=cam-003&event=person_in_water").json()
    assert w["status"] == "not_demanded" and w["policies"] == []

    r = env.get("/api/v1/graph/explain?camera=cam-002&algorithm=drowning")
    assert r.status_code == 200
    assert r.json()["reason"] == "placed" and r.json()["plan"]["kind"] == "saved"


def test_saved_plan_naming_a_device_that_left_the_graph(env: Env) -> None:
    _save_plan(env, [("cam-001", "manhole_missing", "edge-gone")], [], [])
    v = env.get("/api/v1/assignments").json()
    gone = [d for d in v["devices"] if d["device"] == "edge-gone"]
    assert gone and not gone[0]["known"] and gone[0]["compute"]["capacity"] is None
    assert "not in the graph" in gone[0]["notes"][0]
    r = env.get("/api/v1/assignments/why?camera=cam-001&event=manhole_cover_missing")
    assert r.status_code == 200


def test_corrupt_state_file_is_reported_not_replaced(env: Env) -> None:
    env.state_file.parent.mkdir(parents=True, exist_ok=True)
    env.state_file.write_text("{not json")
    v = env.get("/api/v1/assignments").json()
    assert v["source"]["kind"] == "none" and "not a re-planner state file" in v["source"]["error"]
    assert env.state_file.read_text() == "{not json"
    w = env.get("/api/v1/assignments/why?camera=cam-001&event=manhole_cover_missing").json()
    assert w["status"] == "no_plan"


def test_preview_of_a_graph_that_cannot_be_planned(env: Env) -> None:
    g = kg.load(env.engine)
    g.add_node(kg.NodeType.CAMERA, "cam-nozone")  # a camera in no zone
    kg.save(g, env.engine)
    v = env.get("/api/v1/assignments?preview=true").json()
    assert v["source"]["kind"] == "none" and "cam-nozone" in v["source"]["error"]


def test_operator_confirms_and_rejects_scenes(env: Env) -> None:
    base = "/api/v1/graph/cameras/cam-004/scenes"
    r = env.client.post(f"{base}/sidewalk/confirm", headers=auth(env.tok["viewer"]))
    assert r.status_code == 403
    r = env.client.post(f"{base}/sidewalk/confirm", headers=auth(env.tok["operator"]))
    assert r.status_code == 200, r.text
    s = {x["scene"]: x for x in r.json()["scenes"]}
    assert s["sidewalk"]["confirmed"] and s["sidewalk"]["counts"]
    r = env.client.post(f"{base}/street/reject", headers=auth(env.tok["operator"]))
    assert r.status_code == 200
    # the change is stored, and readers see it (cache follows the revision)
    cams = {
        c["camera"]: c for c in env.get("/api/v1/graph/zones/longhua/street-12").json()["cameras"]
    }
    s = {x["scene"]: x for x in cams["cam-004"]["scenes"]}
    assert s["street"]["rejected"] and not s["street"]["counts"]
    assert kg.load(env.engine).camera_scenes("cam-004") == ["sidewalk"]
    # hostile: unknown scene link, bad ids
    r = env.client.post(f"{base}/lobby/confirm", headers=auth(env.tok["operator"]))
    assert r.status_code == 404
    r = env.client.post(
        "/api/v1/graph/cameras/cam%20x/scenes/street/confirm", headers=auth(env.tok["operator"])
    )
    assert r.status_code == 422


def _login(env: Env, role: str = "viewer") -> None:
    r = env.client.post(
        "/login", data={"token": env.tok[role], "next": "/graph"}, follow_redirects=False
    )
    assert r.status_code == 303


def test_console_pages(env: Env) -> None:
    assert env.client.get("/graph", follow_redirects=False).status_code == 303  # login first
    _login(env)
    r = env.client.get("/graph")
    assert r.status_code == 200
    assert 'href="/graph">Graph</a>' in r.text and 'href="/assignments">Assignments</a>' in r.text
    assert 'data-zone="longhua/street-12/north"' in r.text
    r = env.client.get("/graph/longhua")
    assert r.status_code == 200
    assert 'id="kg-picture"' in r.text and 'data-key="algorithm:drowning"' in r.text
    assert "camera:cam-002 → scene:sea_front → event:person_in_water ← algorithm:drowning" in r.text
    assert "scene-act" not in r.text  # viewers get no buttons
    assert env.client.get("/graph/nowhere").status_code == 404

    r = env.client.get("/assignments")
    assert r.status_code == 200 and 'id="preview-btn"' in r.text
    r = env.client.get("/assignments?preview=1")
    assert r.status_code == 200
    assert 'class="plan-source preview"' in r.text and "Preview plan" in r.text
    assert r.text.count('class="why"') >= 3 and 'class="fill ' in r.text

    _login(env, "operator")
    r = env.client.get("/graph/longhua/street-12/north")
    assert 'data-act="confirm"' in r.text and 'data-scene="sidewalk"' in r.text


def test_camera_route(env: Env) -> None:
    r = env.get("/api/v1/graph/cameras/cam-002")
    assert r.status_code == 200
    [a] = r.json()["algorithms"]
    assert a["algorithm"] == "drowning" and a["events"] == ["person_in_water"]
    assert env.get("/api/v1/graph/cameras/cam-404").status_code == 404
    assert env.get("/api/v1/graph/cameras/..").status_code in (404, 422)


def test_picture_stays_readable_when_a_zone_is_crowded() -> None:
    from cloud.api.routes.graph import ApplicableOut, CameraOut, SceneOut, StepOut, ZoneDetail
    from cloud.console._graph_pages import PICTURE_MAX_COLUMN, picture

    def cam(i: int, n_algs: int) -> CameraOut:
        return CameraOut(
            camera=f"c{i}",
            zone="z",
            scenes=[
                SceneOut(
                    scene="street",
                    source="operator",
                    confidence=1.0,
                    confirmed=True,
                    rejected=False,
                    counts=True,
                )
            ],  # fmt: skip
            devices=[],
            algorithms=[
                ApplicableOut(
                    algorithm=f"a{i}-{k}",
                    version="1",
                    scenes=["street"],
                    events=[f"e{k}"],
                    justifications=[StepOut(scene="street", event=f"e{k}", path=[], sentence="")],
                )  # fmt: skip
                for k in range(n_algs)
            ],
        )

    detail = ZoneDetail(
        zone="z", revision=1, parent=None, children=[], scene_threshold=0.5, total=3, offset=0,
        cameras=[cam(0, 150), cam(1, 5), cam(2, 5)],
    )  # fmt: skip
    pic = picture(detail)
    kinds = [n["kind"] for n in pic["nodes"]]
    assert kinds.count("camera") == 1 and pic["shown"] == 1
    assert kinds.count("algorithm") == PICTURE_MAX_COLUMN and pic["cut"] == 150 - PICTURE_MAX_COLUMN
    assert pic["height"] <= (PICTURE_MAX_COLUMN + 1) * 30
    # small cameras are all drawn, every edge between drawn nodes
    detail.cameras = [cam(1, 5), cam(2, 5)]
    pic = picture(detail)
    keys = {n["key"] for n in pic["nodes"]}
    assert pic["shown"] == 2 and pic["cut"] == 0
    assert all(e["a"] in keys and e["b"] in keys for e in pic["edges"])
