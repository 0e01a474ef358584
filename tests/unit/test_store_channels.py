"""Store index, immutable versions, channels, TUF rollback/freeze defenses,
rollouts and the transitions log."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

import algorithm_store as st
from algorithm_store.testing import repack, tiny_classifier_onnx, tiny_package_kwargs
from edge_agent.protocol import (
    Announcement,
    SignatureInvalid,
    StaleMetadata,
    utcnow,
    verify_announcement,
)


@pytest.fixture
def key(tmp_path: Path):
    return st.load_private_key(st.keygen(tmp_path / "keys"))


class Sink(list):
    def __call__(self, ann: Announcement) -> None:
        self.append(ann)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def store(tmp_path: Path, key, sink) -> st.AlgorithmStore:
    return st.AlgorithmStore(tmp_path / "store", private_key=key, announcer=sink)


def _archive(tmp_path: Path, key, version: str, algo: str = "cars") -> Path:
    out = tmp_path / "out" / f"{algo}-{version}.tar"
    if out.exists():
        return out
    model = tiny_classifier_onnx(
        tmp_path / "src" / version / "model.onnx", seed=sum(map(ord, version))
    )
    return st.build_package(
        model,
        id=algo,
        version=version,
        private_key=key,
        out_dir=tmp_path / "out",
        **tiny_package_kwargs(),
    ).archive


@pytest.fixture
def published(tmp_path: Path, key, store) -> st.AlgorithmStore:
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        store.publish(_archive(tmp_path, key, v))
    return store


def test_publish_lists_and_serves_only_published(tmp_path: Path, key, store) -> None:
    a = _archive(tmp_path, key, "1.0.0")
    v = store.publish(a, channel="canary")
    assert v.channels == ("canary",)
    assert store.algorithms()[0]["channels"] == {"canary": "1.0.0"}
    path, size = store.published_artifact(v.sha256)
    assert path.read_bytes() == a.read_bytes() and size == a.stat().st_size
    ref = store.artifact_ref("cars", "1.0.0")
    assert ref.sha256 == v.sha256 and ref.signature == v.manifest.signature.value
    with pytest.raises(st.NotFound):
        store.published_artifact("0" * 64)
    with pytest.raises(st.NotFound):
        store.published_artifact("../../etc/passwd")


def test_versions_are_immutable(tmp_path: Path, key, store) -> None:
    a = _archive(tmp_path, key, "1.0.0")
    store.publish(a)
    with pytest.raises(st.VersionExists, match="immutable"):
        store.publish(a)
    # a different package claiming the same version is refused too
    other = repack(
        a, tmp_path / "other.tar", manifest_update={"description": "new"}, resign_key=key
    )
    with pytest.raises(st.VersionExists):
        store.publish(other)
    assert len(store.versions("cars")) == 1
    con = sqlite3.connect(store.index_path)
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        con.execute("UPDATE versions SET archive_size=1")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        con.execute("DELETE FROM versions")


def test_publish_refuses_package_signed_by_another_key(tmp_path: Path, key, store) -> None:
    other = st.load_private_key(st.keygen(tmp_path / "other"))
    a = repack(_archive(tmp_path, key, "1.0.0"), tmp_path / "o.tar", resign_key=other)
    with pytest.raises(st.PackageRejected, match="pinned key"):
        store.publish(a)
    assert store.algorithms() == []
    assert list((store.root / "blobs").rglob("*")) == []


def test_promote_refuses_downgrade_rollback_is_explicit(published, sink) -> None:
    """TUF rollback attack: nobody moves a channel to an older version by promote."""
    s = published
    assert s.promote("cars", "2.0.0", "stable") is None
    with pytest.raises(st.DowngradeRefused, match="explicit rollback"):
        s.promote("cars", "1.0.0", "stable")
    assert s.channels("cars") == {"stable": "2.0.0"}
    assert s.promote("cars", "2.0.0", "stable") == "2.0.0"  # same version: no-op
    # explicit rollback goes to the version before
    s.promote("cars", "2.0.0", "canary")
    assert s.rollback("cars", "stable", "1.1.0", reason="bad field reports") == "1.1.0"
    assert s.channels("cars")["stable"] == "1.1.0"
    with pytest.raises(st.StoreError, match="older version"):
        s.rollback("cars", "stable", "2.0.0")
    with pytest.raises(st.NotFound):
        s.rollback("cars", "nope")
    with pytest.raises(st.NotFound):
        s.promote("cars", "9.9.9", "stable")
    with pytest.raises(st.StoreError, match="channel"):
        s.promote("cars", "2.0.0", "bad/channel")
    kinds = [(t.kind, t.subject, t.from_value, t.to_value) for t in s.transitions("cars")]
    assert ("rollback", "stable", "2.0.0", "1.1.0") in kinds
    assert [a.channels for a in sink][-1] == {"canary": "2.0.0", "stable": "1.1.0"}


def test_rollback_default_is_previous_version(published) -> None:
    s = published
    s.promote("cars", "1.0.0", "stable")
    s.promote("cars", "1.1.0", "stable")
    s.promote("cars", "2.0.0", "stable")
    assert s.rollback("cars", "stable") == "1.1.0"
    assert s.rollback("cars", "stable") == "1.0.0"
    with pytest.raises(st.NotFound, match="no earlier version"):
        s.rollback("cars", "stable")


def test_publish_to_channel_downgrade_leaves_nothing_visible(tmp_path: Path, key, store) -> None:
    store.publish(_archive(tmp_path, key, "2.0.0"), channel="stable")
    with pytest.raises(st.DowngradeRefused):
        store.publish(_archive(tmp_path, key, "1.0.0"), channel="stable")
    assert [v.version for v in store.versions("cars")] == ["2.0.0"]


def test_transitions_log_is_append_only(published) -> None:
    published.promote("cars", "1.0.0", "stable")
    con = sqlite3.connect(published.index_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE transitions SET reason='x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM transitions")
    log = published.transitions("cars")
    assert [t.seq for t in log] == sorted(t.seq for t in log)
    assert all(t.at and t.reason for t in log)


# -- announcements: freeze attack and replay -------------------------------------


def test_announcements_are_signed_and_expire(published, key, sink) -> None:
    published.promote("cars", "1.1.0", "stable")
    ann = sink[-1]
    pub = st.public_key_raw(key)
    assert ann.channels == {"stable": "1.1.0"}
    assert ann.artifacts["1.1.0"].sha256 == published.version("cars", "1.1.0").sha256
    verify_announcement(ann, pub)
    # freeze attack: an old (expired) announcement is refused
    with pytest.raises(StaleMetadata, match="expired"):
        verify_announcement(ann, pub, now=ann.expires_at + timedelta(seconds=1))
    # tampering with the body breaks the signature
    forged = ann.model_copy(update={"channels": {"stable": "1.0.0"}})
    with pytest.raises(SignatureInvalid):
        verify_announcement(forged, pub)
    # extending expires_at breaks the signature too
    extended = ann.model_copy(update={"expires_at": ann.expires_at + timedelta(days=365)})
    with pytest.raises(SignatureInvalid):
        verify_announcement(extended, pub)
    unsigned = ann.model_copy(update={"signature": None})
    with pytest.raises(SignatureInvalid, match="not signed"):
        verify_announcement(unsigned, pub)


def test_replayed_older_announcement_refused(published, key, sink) -> None:
    published.promote("cars", "2.0.0", "stable")
    newer = sink[-1]
    old = st.make_announcement("cars", {"stable": "1.0.0"}, {}, key)
    old = st.sign_announcement(
        old.model_copy(update={"issued_at": newer.issued_at - timedelta(hours=1)}), key
    )
    with pytest.raises(StaleMetadata, match="older than"):
        verify_announcement(old, st.public_key_raw(key), previous=newer)


def test_short_ttl_announcement_expires(tmp_path: Path, key) -> None:
    ann = st.make_announcement("cars", {}, {}, key, ttl=timedelta(seconds=-1))
    with pytest.raises(StaleMetadata):
        verify_announcement(ann, st.public_key_raw(key), now=utcnow())


# -- rollouts ----------------------------------------------------------------------


def _report(devices, version, healthy=True, error=None):
    return [
        st.DeviceReport(device=d, algorithm="cars", version=version, healthy=healthy, error=error)
        for d in devices
    ]


def test_allowed_transitions_table() -> None:
    T, S = st.ALLOWED_TRANSITIONS, st.RolloutState
    assert set(T) == set(S)
    assert T[S.SUCCEEDED] == frozenset() and T[S.ROLLED_BACK] == frozenset()
    assert S.ROLLED_BACK in T[S.ABORTED]
    assert S.SUCCEEDED not in T[S.PAUSED]


def test_rollout_advances_through_groups_and_promotes(published, sink) -> None:
    s = published
    s.promote("cars", "1.0.0", "stable")
    r = s.start_rollout(
        "cars",
        "1.1.0",
        "stable",
        [{"name": "lab", "devices": ["d1", "d2"]}, {"name": "city", "devices": ["d3", "d4", "d5"]}],
        success_gate=1.0,
    )
    assert r.state is st.RolloutState.RUNNING and r.current_group == 0
    assert s.version_for("cars", "stable", "d1") == "1.1.0"
    assert s.version_for("cars", "stable", "d3") == "1.0.0"
    assert "1.1.0" in sink[-1].artifacts  # devices of the group can find the artifact
    with pytest.raises(st.RolloutConflict):
        s.promote("cars", "2.0.0", "stable")
    with pytest.raises(st.RolloutConflict):
        s.start_rollout("cars", "2.0.0", "stable", [{"name": "x", "devices": ["d9"]}])
    # half the first group healthy: not enough
    (r,) = s.observe(_report(["d1"], "1.1.0"))
    assert r.current_group == 0 and r.groups[0].healthy == 1
    # reports from devices not yet started are ignored
    (r,) = s.observe(_report(["d3"], "1.1.0"))
    assert r.groups[1].healthy == 0
    (r,) = s.observe(_report(["d2"], "1.1.0"))
    assert r.current_group == 1 and r.state is st.RolloutState.RUNNING
    assert s.version_for("cars", "stable", "d3") == "1.1.0"
    assert s.channels("cars")["stable"] == "1.0.0"
    (r,) = s.observe(_report(["d3", "d4", "d5"], "1.1.0"))
    assert r.state is st.RolloutState.SUCCEEDED
    assert s.channels("cars")["stable"] == "1.1.0"
    assert sink[-1].channels["stable"] == "1.1.0"
    assert s.version_for("cars", "stable", "anyone") == "1.1.0"
    log = [(t.kind, t.from_value, t.to_value) for t in s.transitions("cars") if "rollout" in t.kind]
    assert log == [
        ("rollout", None, "pending"),
        ("rollout", "pending", "running"),
        ("rollout-group", "lab", "city"),
        ("rollout", "running", "succeeded"),
    ]
    with pytest.raises(st.InvalidTransition, match="terminal"):
        s.pause_rollout(r.id)


def test_rollout_error_gate_aborts_and_rolls_back(published, sink) -> None:
    s = published
    s.promote("cars", "1.0.0", "stable")
    devices = [f"cam-{i:02d}" for i in range(10)]
    r = s.start_rollout(
        "cars",
        "2.0.0",
        "stable",
        [{"name": "p50", "percent": 50}, {"name": "rest", "percent": 50}],
        devices=devices,
        error_gate=0.4,
    )
    first = r.groups[0].devices
    assert len(first) == 5 and set(first) | set(r.groups[1].devices) == set(devices)
    (r,) = s.observe(_report(first[:1], "2.0.0", healthy=False, error="golden check failed"))
    assert r.state is st.RolloutState.RUNNING  # 1/5 = 20% < 40%
    (r,) = s.observe(_report(first[1:2], "2.0.0", healthy=False, error="crash"))
    assert r.state is st.RolloutState.ROLLED_BACK
    assert "error gate" in [t for t in s.transitions("cars") if t.to_value == "aborted"][0].reason
    assert s.channels("cars")["stable"] == "1.0.0"
    assert all(s.version_for("cars", "stable", d) == "1.0.0" for d in devices)
    assert sink[-1].channels["stable"] == "1.0.0" and "2.0.0" not in sink[-1].artifacts
    states = [t.to_value for t in s.transitions("cars") if t.kind == "rollout"]
    assert states == ["pending", "running", "aborted", "rolled_back"]


def test_rollout_pause_resume_abort_and_refusals(published) -> None:
    s = published
    s.promote("cars", "1.1.0", "stable")
    with pytest.raises(st.DowngradeRefused):
        s.start_rollout("cars", "1.0.0", "stable", [{"name": "g", "devices": ["d1"]}])
    with pytest.raises(st.StoreError, match="both"):
        s.start_rollout(
            "cars",
            "2.0.0",
            "stable",
            [{"name": "a", "devices": ["d1"]}, {"name": "b", "devices": ["d1"]}],
        )
    with pytest.raises(st.StoreError, match="need the device list"):
        s.start_rollout("cars", "2.0.0", "stable", [{"name": "a", "percent": 10}])
    with pytest.raises(st.StoreError, match="success_gate"):
        s.start_rollout(
            "cars", "2.0.0", "stable", [{"name": "a", "devices": ["d1"]}], success_gate=0
        )
    r = s.start_rollout("cars", "2.0.0", "stable", [{"name": "a", "devices": ["d1", "d2"]}])
    r = s.pause_rollout(r.id, reason="night freeze")
    assert r.state is st.RolloutState.PAUSED
    s.observe(_report(["d1", "d2"], "2.0.0"))
    assert s.rollout(r.id).state is st.RolloutState.PAUSED  # gates wait while paused
    assert s.version_for("cars", "stable", "d1") == "2.0.0"
    r = s.resume_rollout(r.id)
    assert r.state is st.RolloutState.SUCCEEDED
    r2 = s.start_rollout("cars", "2.0.0", "canary", [{"name": "a", "devices": ["d1"]}])
    r2 = s.abort_rollout(r2.id, reason="operator")
    assert r2.state is st.RolloutState.ROLLED_BACK
    assert s.version_for("cars", "canary", "d1") is None
    with pytest.raises(st.InvalidTransition):
        s.resume_rollout(r2.id)


def test_device_report_from_reported_state() -> None:
    from edge_agent.protocol import LoadedModel, ReportedState, StreamHealth

    state = ReportedState(
        device="d1",
        applied_revision=3,
        models=[
            LoadedModel(
                algorithm="cars", version="1.1.0", runtime="onnxruntime-cpu", sha256="a" * 64
            )
        ],
        streams=[StreamHealth(stream="cam", state="error", error="decoder died")],
    )
    rep = st.DeviceReport.from_reported(state, "cars")
    assert rep is not None and rep.version == "1.1.0" and not rep.healthy
    assert "decoder died" in rep.error
    assert st.DeviceReport.from_reported(state, "other") is None
