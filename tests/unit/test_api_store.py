"""The algorithm store mounted in the citybrain API (``/api/v1/store``) and its
console page: opened from settings, usable before a key exists (reads) with a
clear 503 on writes, roles on every state change, token-free artifact
downloads for devices."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import algorithm_store as st
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, NO_REDIS, auth

S = "/api/v1/store"
NO_BROKER = "mqtt://127.0.0.1:1"


def _token(client: TestClient, name: str, role: str) -> str:
    r = client.post("/api/v1/tokens", json={"name": name, "role": role}, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture
def env(tmp_path: Path):
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=NO_REDIS,
        mqtt_url=NO_BROKER,  # announcements fail (logged); the channel change stands
        bootstrap_token=ADMIN_TOKEN,
    )
    client = TestClient(create_app(settings))
    tokens = {r: _token(client, r, r) for r in ("viewer", "annotator", "operator")}
    return client, settings, tokens


def _publish_two(settings: Settings, tmp: Path, algorithm: str = "cars") -> bytes:
    """keygen + two signed versions of ``algorithm`` (1.0.0 on canary); the public key."""
    key = st.load_private_key(st.keygen(settings.store_dir))
    store = st.AlgorithmStore(settings.store_dir, private_key=key)
    for i, v in enumerate(("1.0.0", "1.1.0")):
        model = tiny_classifier_onnx(tmp / v / "model.onnx", seed=i)
        built = st.build_package(
            model,
            id=algorithm,
            version=v,
            private_key=key,
            out_dir=tmp / "out",
            **tiny_package_kwargs(),
        )
        store.publish(built.archive, channel="canary" if v == "1.0.0" else None)
    return st.public_key_raw(key)


def test_without_a_key_reads_work_and_writes_say_keygen(env) -> None:
    client, settings, tok = env
    r = client.get(f"{S}/algorithms", headers=auth(tok["viewer"]))
    assert r.status_code == 200 and r.json() == []
    r = client.post(
        f"{S}/algorithms/cars/channels/stable/promote",
        json={"version": "1.0.0"},
        headers=auth(tok["operator"]),
    )
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["type"] == "Conflict" and "citybrain store keygen" in err["message"]
    assert err["field"] == "key"
    # the console page says the same, and lists nothing
    client.cookies.set("citybrain_token", tok["viewer"])
    page = client.get("/store")
    assert page.status_code == 200
    assert 'id="no-key"' in page.text and "citybrain store keygen" in page.text
    assert 'id="store-empty"' in page.text


def test_reads_need_a_token_writes_need_an_operator(env, tmp_path: Path) -> None:
    client, settings, tok = env
    _publish_two(settings, tmp_path)  # key created after the app started: picked up
    assert client.get(f"{S}/algorithms").status_code == 401
    r = client.get(f"{S}/algorithms/cars", headers=auth(tok["viewer"]))
    assert r.status_code == 200
    body = r.json()
    assert [v["version"] for v in body["versions"]] == ["1.1.0", "1.0.0"]
    assert body["channels"] == {"canary": "1.0.0"}
    for role in ("viewer", "annotator"):
        r = client.post(
            f"{S}/algorithms/cars/channels/stable/promote",
            json={"version": "1.1.0"},
            headers=auth(tok[role]),
        )
        assert r.status_code == 403, role
        assert r.json()["error"]["type"] == "Forbidden"
        r = client.post(
            f"{S}/rollouts",
            json={
                "algorithm": "cars",
                "version": "1.1.0",
                "channel": "stable",
                "groups": [{"name": "all", "percent": 100}],
            },
            headers=auth(tok[role]),
        )
        assert r.status_code == 403, role
    assert client.get(f"{S}/algorithms/cars", headers=auth(tok["viewer"])).json()["channels"] == {
        "canary": "1.0.0"
    }  # nothing changed


def test_operator_promotes_rolls_back_and_refusals_are_clean_json(env, tmp_path: Path) -> None:
    client, settings, tok = env
    _publish_two(settings, tmp_path)
    op = auth(tok["operator"])
    r = client.post(
        f"{S}/algorithms/cars/channels/canary/promote", json={"version": "1.1.0"}, headers=op
    )
    assert r.status_code == 200 and r.json() == {
        "channel": "canary",
        "version": "1.1.0",
        "previous": "1.0.0",
    }
    # a downgrade without an explicit rollback is refused, with a readable message
    r = client.post(
        f"{S}/algorithms/cars/channels/canary/promote", json={"version": "1.0.0"}, headers=op
    )
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["type"] == "Conflict" and "rollback" in err["message"] and "{" not in err["message"]
    r = client.post(f"{S}/algorithms/cars/channels/canary/rollback", json={}, headers=op)
    assert r.status_code == 200 and r.json()["version"] == "1.0.0"
    # hostile inputs
    r = client.post(
        f"{S}/algorithms/nope/channels/canary/promote", json={"version": "1.0.0"}, headers=op
    )
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
    r = client.post(
        f"{S}/algorithms/cars/channels/canary/promote",
        json={"version": "1.1.0", "x": 1},
        headers=op,
    )
    assert r.status_code == 422
    # a staged rollout shows up with its progress
    r = client.post(
        f"{S}/rollouts",
        json={
            "algorithm": "cars",
            "version": "1.1.0",
            "channel": "stable",
            "groups": [{"name": "pilot", "devices": ["cam-1", "cam-2"]}],
        },
        headers=op,
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    client.cookies.set("citybrain_token", tok["operator"])
    page = client.get("/store")
    assert page.status_code == 200
    assert 'data-algorithm="cars"' in page.text and f'data-rollout="{rid}"' in page.text
    assert "0/2 healthy" in page.text and "<progress" in page.text
    assert 'class="promote-btn"' in page.text and 'class="rollback-btn"' in page.text
    client.cookies.set("citybrain_token", tok["viewer"])
    page = client.get("/store")
    assert 'class="promote-btn"' not in page.text  # viewers see no buttons


def test_devices_download_artifacts_without_a_token(env, tmp_path: Path) -> None:
    client, settings, tok = env
    _publish_two(settings, tmp_path)
    v = client.get(f"{S}/algorithms/cars/versions/1.0.0", headers=auth(tok["viewer"])).json()
    sha, size = v["artifact"]["sha256"], v["artifact"]["size"]
    full = client.get(f"{S}/artifacts/{sha}")  # no Authorization header
    assert full.status_code == 200 and len(full.content) == size
    part = client.get(f"{S}/artifacts/{sha}", headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == full.content[10:]
    # the token-free route is only the download: an algorithm named "artifacts" is still guarded
    assert client.get(f"{S}/algorithms/artifacts/versions/1.0.0").status_code == 401
    # only published artifacts are served
    r = client.get(f"{S}/artifacts/{'0' * 64}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"


@pytest.mark.integration
def test_channel_moves_are_announced_signed_on_the_broker(tmp_path: Path, mqtt_port: int) -> None:
    import threading
    import uuid

    import paho.mqtt.client as mqtt

    from edge_agent.protocol import Announcement, Topics, decode, verify_announcement

    algorithm = f"cars_{uuid.uuid4().hex[:8]}"
    url = f"mqtt://127.0.0.1:{mqtt_port}"
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=NO_REDIS, mqtt_url=url, bootstrap_token=ADMIN_TOKEN
    )
    client = TestClient(create_app(settings))
    op = auth(_token(client, "op", "operator"))
    public = _publish_two(settings, tmp_path, algorithm)
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(c, ud, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.payload:
            got.append(msg.payload)
            if b'"stable"' in msg.payload:
                arrived.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(Topics.announce(algorithm), qos=1)
        r = client.post(
            f"{S}/algorithms/{algorithm}/channels/stable/promote",
            json={"version": "1.1.0"},
            headers=op,
        )
        assert r.status_code == 200, r.text
        assert arrived.wait(20), got
        ann = verify_announcement(decode(got[-1], Announcement), public)
        assert ann.channels == {"canary": "1.0.0", "stable": "1.1.0"}
        assert set(ann.artifacts) == {"1.0.0", "1.1.0"}
    finally:
        # clear the retained announcement of this throw-away algorithm
        sub.publish(Topics.announce(algorithm), b"", qos=1, retain=True).wait_for_publish(5)
        sub.loop_stop()
        sub.disconnect()
