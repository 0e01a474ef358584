"""TensorRT on a GPU device: the agent starts on ONNX Runtime, builds an engine
from the package's ONNX in the background (progress reported), checks it against
the golden pair and switches to it. Runs only where TensorRT and a GPU exist."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edge_agent import Agent, detect_hardware, load_config
from edge_agent._runtime import tensorrt_available
from edge_agent.protocol import Topics, encode
from tests.edge_support import ChunkServer, Keys, build_package, desired, publish_retained, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_engine_built_in_background_then_swapped_in(tmp_path: Path, mqtt_port: int) -> None:
    hw = detect_hardware()
    why = tensorrt_available()
    if hw.gpu_arch is None or why is not None:
        pytest.skip(f"needs a GPU with TensorRT: {why or 'no GPU detected'}")
    keys = Keys(tmp_path)
    archive, ref, _ = build_package(tmp_path, keys)
    srv = ChunkServer(mqtt_port)
    srv.add(archive)
    dev = f"t-{uuid.uuid4().hex[:10]}"
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{mqtt_port}",
        data_dir=tmp_path / "agent",
        store_public_key=keys.path,
    )
    agent = Agent(cfg, hardware=hw).start()
    try:
        publish_retained(
            mqtt_port,
            Topics.desired(dev),
            encode(desired(dev, 1, [("cam1", "tiny-cls", "1.0.0", ref)])),
        )
        wait_for(lambda: agent.applied_revision == 1, 60)
        first = next(iter(agent.models.values())).model.runtime
        assert first.startswith("onnxruntime")
        wait_for(lambda: next(iter(agent.models.values())).model.runtime == "tensorrt", 600)
        assert agent.streams["cam1"].model.runtime == "tensorrt"
        assert agent.last_error is None
        wait_for(lambda: agent.streams["cam1"].frames > 5, 30)
    finally:
        agent.stop()
        srv.close()
        for t in (Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
            publish_retained(mqtt_port, t, b"")
