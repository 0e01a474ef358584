"""Desired states from plans (revisions), debounce/hysteresis on an injected clock,
time-window edges, the persisted planner state, and one re-plan of the service over a
real SQLite catalog with an in-memory transport and store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import scheduler as sch
from edge_agent.protocol import (
    Announcement,
    ArtifactRef,
    DesiredState,
    DeviceStatus,
    ProtocolError,
    decode,
    encode,
)

SHA = {"car": "a" * 64, "ped": "b" * 64, "car2": "c" * 64}


class FakeStore:
    """version_for / artifact_ref like AlgorithmStore; a rollout pins some devices."""

    def __init__(self) -> None:
        self.channels = {"car": "1.0.0", "ped": "1.0.0"}
        self.rollout: dict[str, tuple[str, set[str]]] = {}
        self.published = {
            ("car", "1.0.0"): "car",
            ("ped", "1.0.0"): "ped",
            ("car", "2.0.0"): "car2",
        }

    def version_for(self, algorithm: str, channel: str, device_id: str) -> str | None:
        if channel != "stable":
            return None
        r = self.rollout.get(algorithm)
        if r and device_id in r[1]:
            return r[0]
        return self.channels.get(algorithm)

    def artifact_ref(self, algorithm: str, version: str) -> ArtifactRef:
        key = self.published.get((algorithm, version))
        if key is None:
            raise LookupError(f"{algorithm} {version} is not published")
        return ArtifactRef(sha256=SHA[key], size=10, signature="c2ln")


def plan(*rows: tuple[str, str, str]) -> sch.Plan:
    return sch.Plan.model_validate(
        {
            "assignments": [
                {"camera": c, "algorithm": a, "version": "1.0.0", "device": d} for c, a, d in rows
            ],
            "objective": 0,
            "solver": {"name": "test", "seconds": 0, "optimal": True},
        }
    )


SOURCES = {"c1": "rtsp://cam/1", "c2": "rtsp://cam/2", "c3": "/data/c3.avi"}


def test_plan_to_desired_builds_assignments_from_the_store() -> None:
    store = FakeStore()
    store.rollout["car"] = ("2.0.0", {"d2"})
    p = plan(("c1", "car", "d1"), ("c1", "ped", "d1"), ("c2", "car", "d2"))
    out = sch.plan_to_desired(
        p, store, sources=SOURCES, previous_revisions={}, fps={"car": 5, "ped": 1}
    )
    assert set(out) == {"d1", "d2"}
    d1 = out["d1"]
    assert d1.revision == 1 and d1.device == "d1"
    assert [(a.stream, a.algorithm, a.version, a.source, a.fps) for a in d1.assignments] == [
        ("c1", "car", "1.0.0", "rtsp://cam/1", 5),
        ("c1", "ped", "1.0.0", "rtsp://cam/1", 1),
    ]
    assert d1.assignments[0].artifact.sha256 == SHA["car"]
    # d2 is in the rollout's started group: it gets the rollout's version and artifact
    (a2,) = out["d2"].assignments
    assert (a2.version, a2.artifact.sha256) == ("2.0.0", SHA["car2"])
    # what goes on the wire decodes as the contract's DesiredState
    assert decode(encode(d1), DesiredState) == d1


def test_revisions_are_monotonic_and_unchanged_devices_keep_theirs() -> None:
    store = FakeStore()
    first = sch.build_desired(
        plan(("c1", "car", "d1"), ("c2", "car", "d2")),
        store,
        sources=SOURCES,
        previous_revisions={"d1": 7},  # e.g. from an older state: never go back
    )
    assert first.states["d1"].revision == 8 and first.states["d2"].revision == 1
    assert sorted(first.changed) == ["d1", "d2"]
    # c2 moves from d2 to d1: d1 changes, d2 loses everything (empty list), d3 is new
    second = sch.build_desired(
        plan(("c1", "car", "d1"), ("c2", "car", "d1")),
        store,
        sources=SOURCES,
        previous=first.states,
        devices=["d3"],
    )
    assert second.states["d1"].revision == 9
    assert second.states["d2"].revision == 2 and second.states["d2"].assignments == []
    assert second.states["d3"].revision == 1 and second.states["d3"].assignments == []
    assert sorted(second.changed) == ["d1", "d2", "d3"]
    # the same plan again: nothing changes, the very same state objects are kept
    third = sch.build_desired(
        plan(("c2", "car", "d1"), ("c1", "car", "d1")),  # order does not matter
        store,
        sources=SOURCES,
        previous=second.states,
    )
    assert third.changed == []
    assert all(third.states[d] is second.states[d] for d in ("d1", "d2", "d3"))
    # a version moving on the channel changes the devices running it only
    store.channels["car"] = "2.0.0"
    fourth = sch.build_desired(
        plan(("c1", "car", "d1"), ("c2", "car", "d1")),
        store,
        sources=SOURCES,
        previous=third.states,
    )
    assert fourth.changed == ["d1"] and fourth.states["d1"].revision == 10
    assert {a.version for a in fourth.states["d1"].assignments} == {"2.0.0"}


def test_assignments_that_cannot_be_expressed_are_reported_not_dropped_silently() -> None:
    store = FakeStore()
    out = sch.build_desired(
        plan(("c1", "car", "d1"), ("cX", "car", "d1"), ("c2", "boat", "d1")),
        store,
        sources=SOURCES,
    )
    assert [a.stream for a in out.states["d1"].assignments] == ["c1"]
    assert any("cX has no source" in s for s in out.skipped)
    assert any("boat 1.0.0 is not published" in s for s in out.skipped)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_debounce_coalesces_a_burst_into_one_replan() -> None:
    clk = Clock()
    deb = sch.Debouncer(window_s=2, max_delay_s=10, clock=clk)
    assert deb.take() is None and deb.next_wakeup() is None
    deb.trigger("policy change")
    clk.t += 1.5
    deb.trigger("announcement of car", resolve=False)
    clk.t += 1.5
    assert deb.take() is None  # 1.5 s since the last trigger < window
    assert deb.next_wakeup() == pytest.approx(clk.t + 0.5)
    clk.t += 0.5
    batch = deb.take()
    assert batch is not None and batch.resolve and len(batch.reasons) == 2
    assert deb.take() is None


def test_a_continuous_stream_of_triggers_still_fires_after_max_delay() -> None:
    clk = Clock()
    deb = sch.Debouncer(window_s=2, max_delay_s=5, clock=clk)
    fired = 0
    for _ in range(100):  # a trigger every second for 100 s
        deb.trigger("noise", resolve=False)
        clk.t += 1
        if deb.take() is not None:
            fired += 1
    assert 15 <= fired <= 20  # once per max_delay, not 100 times, not never


def test_offline_hysteresis_and_flapping_device() -> None:
    clk = Clock()
    deb = sch.Debouncer(window_s=2, offline_grace_s=30, device_min_interval_s=10, clock=clk)
    deb.device_status("d1", True)
    deb.device_status("d2", True)
    assert deb.available() == {"d1", "d2"}
    clk.t += 2
    assert deb.take() is not None  # both came online: one re-plan
    # d1 flaps 10 times within a second: it never stays offline for the grace period
    for _ in range(10):
        deb.device_status("d1", False)
        clk.t += 0.05
        deb.device_status("d1", True)
        clk.t += 0.05
    clk.t += 60
    assert deb.take() is None and deb.available() == {"d1", "d2"}
    # d2 goes offline for good: removed only after the grace period
    deb.device_status("d2", False)
    clk.t += 29
    assert deb.available() == {"d1", "d2"} and deb.take() is None
    assert deb.next_wakeup() == pytest.approx(clk.t + 1)
    clk.t += 1
    assert deb.available() == {"d1"}
    clk.t += 2
    batch = deb.take()
    assert batch is not None and batch.reasons == ["device d2 offline"]
    # d2 flapping from offline: comes online (re-plan), goes off, comes on... the
    # per-device interval bounds the changes, and hysteresis absorbs the rest
    changes = 0
    for _ in range(100):  # 10 s of flapping at 10 Hz
        deb.device_status("d2", True)
        clk.t += 0.05
        deb.device_status("d2", False)
        clk.t += 0.05
        if deb.take() is not None:
            changes += 1
    clk.t += 100
    while deb.take() is not None:
        changes += 1
    assert 1 <= changes <= 3
    assert deb.available() == {"d1"}  # it ended offline: gone after grace


def test_rate_limit_defers_a_quick_second_change() -> None:
    clk = Clock()
    deb = sch.Debouncer(window_s=0, offline_grace_s=0, device_min_interval_s=10, clock=clk)
    deb.device_status("d1", True)
    assert deb.take() is not None
    clk.t += 1
    deb.device_status("d1", False)  # wants to go, but changed 1 s ago
    assert deb.available() == {"d1"} and deb.take() is None
    assert deb.next_wakeup() == pytest.approx(clk.t + 9)
    clk.t += 9
    assert deb.available() == set()
    assert deb.take().reasons == ["device d1 offline"]  # type: ignore[union-attr]


def test_unknown_and_never_online_devices_are_unavailable() -> None:
    deb = sch.Debouncer(clock=Clock())
    deb.device_status("d9", False)
    assert deb.available() == set() and deb.take() is None


def test_a_restart_keeps_the_saved_plans_devices_for_the_grace_period() -> None:
    clk = Clock()
    deb = sch.Debouncer(window_s=1, offline_grace_s=30, clock=clk)
    deb.assume_available(["d1", "d2", "d3"])
    deb.trigger("startup")
    deb.device_status("d1", True)  # its retained status arrives
    deb.device_status("d2", False)  # retained offline: gone after the grace, not at once
    clk.t += 1
    batch = deb.take()
    assert batch is not None and batch.reasons == ["startup"]  # no availability change
    assert deb.available() == {"d1", "d2", "d3"}
    clk.t += 29
    assert deb.available() == {"d1"}  # d2 said offline, d3 never said anything
    clk.t += 1
    assert sorted(deb.take().reasons) == ["device d2 offline", "device d3 offline"]  # type: ignore[union-attr]


def test_bad_debouncer_settings() -> None:
    with pytest.raises(ValueError):
        sch.Debouncer(window_s=5, max_delay_s=1)
    with pytest.raises(ValueError):
        sch.Debouncer(offline_grace_s=-1)


def test_next_time_window_edge() -> None:
    import knowledge_graph as kg

    day = kg.Policy(id="day", zone="a", events=["x"], priority=1, hours=kg.parse_hours("7-19"))
    weekend = kg.Policy(id="we", zone="a", events=["x"], priority=1, days=kg.parse_days("sat,sun"))
    always = kg.Policy(id="all", zone="a", events=["x"], priority=1)
    fri = datetime(2026, 11, 27, 10, 30)  # a Friday
    at = sch._replan.active_set([day, weekend, always])
    assert sch.next_window_edge(at, fri) == datetime(2026, 11, 27, 19, 0)
    assert sch.next_window_edge(at, datetime(2026, 11, 27, 20, 0)) == datetime(2026, 11, 28, 0, 0)
    assert sch.next_window_edge(sch._replan.active_set([always]), fri) is None


def test_planner_state_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    assert sch.load_state(path).plan is None
    built = sch.build_desired(plan(("c1", "car", "d1")), FakeStore(), sources=SOURCES)
    st = sch.PlannerState(plan=plan(("c1", "car", "d1")), desired=built.states, graph_revision=3)
    sch.save_state(path, st)
    back = sch.load_state(path)
    assert back.revisions() == {"d1": 1} and back.graph_revision == 3
    assert back.desired["d1"] == built.states["d1"]
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left
    path.write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        sch.load_state(path)


# -- the service's re-plan, over a real SQLite catalog, without a broker ---------------


class Wire:
    """Records what the service publishes (stands in for the paho client)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Any:
        self.sent.append((topic, payload, qos, retain))

        class Info:
            def wait_for_publish(self, timeout: float) -> None:
                return None

            def is_published(self) -> bool:
                return True

        return Info()


def small_graph(engine: Any) -> None:
    import knowledge_graph as kg

    g = kg.CityGraph()
    g.add_scene("street")
    g.add_event("car_event")
    g.add_event("person")
    g.add_algorithm(
        "car",
        version="1.0.0",
        detects=["car_event"],
        scenes=["street"],
        fps=2,
        cost={"cpu": {"ms_per_frame": 50, "mem_mb": 100}},
    )
    g.add_algorithm(
        "ped",
        version="1.0.0",
        detects=["person"],
        scenes=["street"],
        fps=2,
        cost={"cpu": {"ms_per_frame": 50, "mem_mb": 100}},
    )
    for c in ("c1", "c2"):
        g.add_camera(c, zone="city/a", scenes=["street"], source=SOURCES[c])
    g.add_device("d1", target="cpu", ms_per_s=1000, mem_mb=1000, streams=4, reaches=["c1", "c2"])
    g.add_device("d2", target="cpu", ms_per_s=1000, mem_mb=1000, streams=4, reaches=["c1", "c2"])
    g.add_policy(kg.Policy(id="p1", zone="city/**", events=["car_event", "person"], priority=5))
    g.add_policy(
        kg.Policy(
            id="p2",
            zone="city",
            priority=1,
            exclusions=[kg.Exclusion(algorithm="ped", camera="c2")],
        )
    )
    kg.save(g, engine)


@pytest.fixture
def engine(data_dir: Path):
    from cloud.catalog.db import make_engine, migrate
    from cloud.core.config import get_settings

    eng = make_engine(get_settings().database_url)
    migrate(eng)
    small_graph(eng)
    yield eng
    eng.dispose()


def test_service_replans_publishes_changed_devices_only(engine: Any, tmp_path: Path) -> None:
    clk = Clock()
    svc = sch.ReplanService(
        engine=engine,
        store=FakeStore(),
        mqtt_url="mqtt://127.0.0.1:1",
        state_path=tmp_path / "state.json",
        clock=clk,
        wall_clock=lambda: datetime(2026, 11, 27, 10, 0),
        time_limit=2,
        offline_grace_s=5,
        device_min_interval_s=0,
    )
    svc._client = wire = Wire()
    svc._refresh_graph_index()
    svc.handle("cb/v1/dev/d1/status", encode(DeviceStatus(device="d1", state="online")))
    svc.handle("cb/v1/dev/d2/status", encode(DeviceStatus(device="d2", state="online")))
    svc.handle("cb/v1/dev/zz/status", encode(DeviceStatus(device="zz", state="online")))  # not ours
    clk.t += 3
    svc._tick()
    assert len(svc.history) == 1 and svc.history[0].error is None
    first = {decode(p, DesiredState).device: decode(p, DesiredState) for _, p, _, _ in wire.sent}
    assert all(qos == 1 and retain for _, _, qos, retain in wire.sent)
    assert set(first) == {"d1", "d2"}
    placed = {(a.stream, a.algorithm): d for d, s in first.items() for a in s.assignments}
    assert set(placed) == {("c1", "car"), ("c1", "ped"), ("c2", "car")}  # ped excluded on c2
    # the device holding the cameras goes offline: after the grace they move to the other
    busy = next(d for d, st in first.items() if st.assignments)
    other = ({"d1", "d2"} - {busy}).pop()
    wire.sent.clear()
    svc.handle(f"cb/v1/dev/{busy}/status", encode(DeviceStatus(device=busy, state="offline")))
    clk.t += 3
    svc._tick()
    assert wire.sent == []  # still within the grace period
    clk.t += 3
    svc._tick()  # the grace is over: the change is noted, the debounce window starts
    clk.t += 2
    svc._tick()
    second = {decode(p, DesiredState).device: decode(p, DesiredState) for _, p, _, _ in wire.sent}
    assert {a.stream for a in second[other].assignments} == {"c1", "c2"}
    assert second[busy].assignments == [] and second[busy].revision == first[busy].revision + 1
    assert second[other].revision == first[other].revision + 1
    assert svc.replans == 2
    # the state survives a restart: a new service keeps the revisions
    again = sch.ReplanService(
        engine=engine, store=FakeStore(), mqtt_url="mqtt://x:1", state_path=tmp_path / "state.json"
    )
    assert again.state.revisions() == svc.state.revisions()
    assert svc.rejected == 0


def test_service_never_publishes_when_the_graph_cannot_be_planned(
    engine: Any, tmp_path: Path
) -> None:
    clk = Clock()
    svc = sch.ReplanService(
        engine=engine,
        store=FakeStore(),
        mqtt_url="mqtt://127.0.0.1:1",
        state_path=tmp_path / "state.json",
        clock=clk,
        time_limit=1,
    )
    svc._client = wire = Wire()
    svc._refresh_graph_index()
    rec = svc.run_batch(sch.Batch(["test"], resolve=True), {"d1"})
    assert rec.error is None
    wire.sent.clear()
    # a store that fails: an error is recorded, nothing is published, state unchanged
    before = svc.state

    class Broken(FakeStore):
        def version_for(self, *a: Any) -> str | None:
            raise RuntimeError("index locked")

    svc.store = Broken()
    rec = svc.run_batch(sch.Batch(["test"], resolve=True), {"d2"})
    assert rec.error == "index locked" and rec.published == {}
    assert wire.sent == [] and svc.state is before
    assert sch.load_state(tmp_path / "state.json").revisions() == before.revisions()
    # an invalid message is refused with the contract's error, nothing else happens
    with pytest.raises(Exception, match="schema"):
        svc.handle("cb/v1/dev/d1/status", b'{"schema": "citybrain.status/9"}')


class RolloutStore(FakeStore):
    """A store whose rollout advances when a device reports healthy."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[Any] = []
        self.group = 0

    def observe(self, reports: list[Any]) -> list[Any]:
        self.observed.extend(reports)
        if any(r.healthy and r.version == "2.0.0" for r in reports):
            self.group = 1
            self.rollout["car"] = ("2.0.0", {"d1", "d2"})
        return []

    def reconcile(self) -> list[Any]:
        return []

    def rollouts(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(id=1, state="running", current_group=self.group)]


def test_versions_rollouts_and_time_windows_trigger_the_service(
    engine: Any, tmp_path: Path
) -> None:
    import knowledge_graph as kg
    from edge_agent.protocol import LoadedModel, ReportedState

    clk = Clock()
    wall = [datetime(2026, 11, 27, 10, 0)]
    store = RolloutStore()
    svc = sch.ReplanService(
        engine=engine,
        store=store,
        mqtt_url="mqtt://127.0.0.1:1",
        state_path=tmp_path / "state.json",
        clock=clk,
        wall_clock=lambda: wall[0],
        time_limit=1,
    )
    svc._client = wire = Wire()
    svc._refresh_graph_index()
    rec = svc.run_batch(sch.Batch(["start"], resolve=True), {"d1", "d2"})
    assert rec.error is None and rec.published
    solves = svc.replans
    # a version moves on the channel: announced -> desired states rebuilt, no re-solve
    wire.sent.clear()
    store.channels["car"] = "2.0.0"
    with pytest.raises(ProtocolError):  # refused (counted as rejected on the wire)
        svc.handle("cb/v1/store/announce/car", b'{"schema": "citybrain.announce/1"}')
    ann = Announcement(
        algorithm="car", channels={"stable": "2.0.0"}, expires_at=datetime(2030, 1, 1, tzinfo=UTC)
    )
    svc.handle("cb/v1/store/announce/zzz", encode(ann))  # not an algorithm of ours
    assert not svc.debouncer._pending.reasons
    svc.handle("cb/v1/store/announce/car", encode(ann))
    clk.t += 3
    svc._tick()
    assert svc.replans == solves and not svc.history[-1].resolved
    cars = [
        a
        for _, p, _, _ in wire.sent
        for a in decode(p, DesiredState).assignments
        if a.algorithm == "car"
    ]
    assert cars and {a.version for a in cars} == {"2.0.0"}
    # a device reports: fed to the store's rollouts; progress rebuilds the desired states
    store.channels["car"] = "1.0.0"  # rolled back; a rollout of 2.0.0 starts with no device
    store.rollout["car"] = ("2.0.0", set())
    svc.run_batch(sch.Batch(["rollback"]), {"d1", "d2"})
    wire.sent.clear()
    rep = ReportedState(
        device="d1",
        applied_revision=1,
        models=[
            LoadedModel(
                algorithm="car", version="2.0.0", runtime="onnxruntime-cpu", sha256="a" * 64
            )
        ],
    )
    svc.handle("cb/v1/dev/d1/reported", encode(rep))
    svc.handle("cb/v1/dev/zz/reported", encode(rep.model_copy(update={"device": "zz"})))  # not ours
    clk.t += 0.1
    svc._tick()  # reports are processed on the service thread
    assert [(r.device, r.algorithm, r.healthy) for r in store.observed] == [("d1", "car", True)]
    clk.t += 3
    svc._tick()
    assert svc.history[-1].reasons == ["rollout progress after d1"]
    assert {
        a.version
        for _, p, _, _ in wire.sent
        for a in decode(p, DesiredState).assignments
        if a.algorithm == "car"
    } == {"2.0.0"}
    # a time-window edge: the next one is computed at each re-plan and triggers a solve
    g = kg.load(engine)
    g.add_policy(
        kg.Policy(
            id="night", zone="city", events=["car_event"], priority=9,
            hours=kg.parse_hours("22-6"),
        )
    )  # fmt: skip
    kg.save(g, engine)
    svc.run_batch(sch.Batch(["policy"], resolve=True), {"d1", "d2"})
    assert svc._next_edge == datetime(2026, 11, 27, 22, 0)
    solves = svc.replans
    svc._graph_revision = kg.stored_revision(engine)  # the save above is already planned
    wall[0] = datetime(2026, 11, 27, 22, 0, 1)
    svc._tick()
    clk.t += 3
    svc._tick()
    assert svc.replans == solves + 1, [(r.reasons, r.error) for r in svc.history[-3:]]
    assert svc.history[-1].reasons == ["time window edge at 2026-11-27T22:00:00"]
    assert svc._next_edge == datetime(2026, 11, 28, 6, 0)
