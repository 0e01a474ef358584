"""The agent against the real algorithm store: packages built and signed by
``algorithm_store.build_package``, published, served by its MQTT ChunkService
and by its HTTP router (Range/ETag), verified with the store's public key."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent import Agent, load_config
from edge_agent.protocol import Topics, encode
from tests.conftest import free_port, port_answers
from tests.edge_support import classifier_onnx, desired, publish_retained, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Any:
    from algorithm_store import AlgorithmStore, build_package, keygen, load_private_key

    key_path = keygen(tmp_path / "keys")
    private = load_private_key(key_path)
    st = AlgorithmStore(tmp_path / "store", private_key=private)
    refs = {}
    for version, bias in (("1.0.0", 0.0), ("2.0.0", 0.4)):
        onnx_path = tmp_path / f"m-{version}.onnx"
        classifier_onnx(onnx_path, bias=bias)
        built = build_package(
            onnx_path,
            id="interop-cls",
            version=version,
            task="classify",
            labels=["car", "person", "bike"],
            private_key=private,
            out_dir=tmp_path / "out",
            profile=False,
        )
        st.publish(built.archive)
        refs[version] = st.artifact_ref("interop-cls", version)
    return st, key_path.with_name(key_path.name + ".pub"), refs


def _agent(tmp_path: Path, port: int, pub: Path, **over: Any) -> Agent:
    cfg = load_config(
        None,
        device_id=f"t-{uuid.uuid4().hex[:10]}",
        broker_url=f"mqtt://127.0.0.1:{port}",
        data_dir=tmp_path / "agent",
        store_public_key=pub,
        chunk_size=4096,
        **over,
    )
    return Agent(cfg).start()


def _clear(port: int, dev: str) -> None:
    for t in (Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
        publish_retained(port, t, b"")


def test_agent_fetches_from_the_store_chunk_service(
    store: Any, tmp_path: Path, mqtt_port: int
) -> None:
    from algorithm_store import ChunkService

    st, pub, refs = store
    svc = ChunkService(st, f"mqtt://127.0.0.1:{mqtt_port}").start()
    agent = _agent(tmp_path, mqtt_port, pub)
    try:
        for rev, version in ((1, "1.0.0"), (2, "2.0.0")):
            publish_retained(
                mqtt_port,
                Topics.desired(agent.device),
                encode(
                    desired(agent.device, rev, [("cam1", "interop-cls", version, refs[version])])
                ),
            )
            wait_for(lambda rev=rev: agent.applied_revision == rev, 30)
        assert [k[1] for k in agent.models] == ["2.0.0"]
        assert agent.last_error is None and agent.stats.get("chunk_corrupt") == 0
        assert agent.stats.get("bytes_fetched") == refs["1.0.0"].size + refs["2.0.0"].size
        assert svc.stats.rejected == 0
    finally:
        agent.stop()
        svc.stop()
        _clear(mqtt_port, agent.device)


def test_agent_fetches_over_the_store_http_api(store: Any, tmp_path: Path, mqtt_port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    from algorithm_store import make_router

    st, pub, refs = store
    app = FastAPI()
    app.include_router(make_router(st), prefix="/api/v1/store")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_for(lambda: port_answers(port), 20)
    agent = _agent(
        tmp_path, mqtt_port, pub, fetch_mode="http", http_base_url=f"http://127.0.0.1:{port}"
    )
    try:
        publish_retained(
            mqtt_port,
            Topics.desired(agent.device),
            encode(desired(agent.device, 1, [("cam1", "interop-cls", "1.0.0", refs["1.0.0"])])),
        )
        wait_for(lambda: agent.applied_revision == 1, 30)
        assert agent.last_error is None
        assert agent.stats.get("bytes_fetched") == refs["1.0.0"].size
    finally:
        agent.stop()
        server.should_exit = True
        t.join(10)
        _clear(mqtt_port, agent.device)
