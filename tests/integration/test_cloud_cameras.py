"""A cloud device: the edge agent with its model on a real local Ray Serve,
against a private Mosquitto, with a signed classifier published in a real
AlgorithmStore. Desired state for ``cloud-1`` naming a video -> the model is
loaded with runtime ``ray-serve`` (the replica read and verified the same
archive), frames go through the deployment, the package's event rule fires on
the events topic, hard cases leave through the outbox; a package with a bad
signature is refused exactly as on an edge device. ``citybrain cameras run``
joins the same Ray from a subprocess (an image-folder camera); its bad inputs
exit 2. One Ray start for the whole file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloud.serving import (
    ServingConfig,
    cloud_hardware,
    cloud_model_loader,
    deployment_name,
    start_serving,
)
from edge_agent import Agent, load_config
from edge_agent.protocol import ArtifactRef, Event, HardSample, ReportedState, Topics, encode
from tests.conftest import REPO, TEST_DATA, free_port
from tests.edge_support import (
    ChunkServer,
    Keys,
    Mosquitto,
    Watcher,
    build_package,
    desired,
    publish_retained,
    wait_for,
)
from tests.unit.test_serving_predictor import make_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VIDEO = TEST_DATA / "vtest_excerpt.avi"
FOLDER = TEST_DATA / "vtest_crops" / "images"  # an image-folder camera
CFG = ServingConfig(max_batch_size=4, num_cpus=0.25, min_replicas=1, max_replicas=1)
RULE = {"event": "road_user_seen", "labels": ["car", "person", "bike"], "min_score": 0.0}


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from ray import serve

    try:
        yield start_serving(num_cpus=1)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private broker, a store with ``cls`` 1.0.0 (signed, with an event rule),
    its public key file and a chunk service serving the published archive."""
    tmp = tmp_path_factory.mktemp("cloud-cameras")
    store = make_store(tmp, ("1.0.0",), package={"event_rules": [RULE]})[0]
    broker = Mosquitto(tmp / "mosquitto", persistence=False).start()
    key = tmp / "store.pub"
    key.write_bytes(store.public_key)
    srv = ChunkServer(broker.port)
    sha = store.version("cls", "1.0.0").sha256
    archive, _ = store.published_artifact(sha)
    srv.add(archive)
    ref = ArtifactRef(sha256=sha, size=archive.stat().st_size, signature="signed")

    w = SimpleNamespace(tmp=tmp, store=store, broker=broker, key=key, srv=srv, ref=ref)
    try:
        yield w
    finally:
        srv.close()
        broker.stop()


def agent_for(world: Any, device: str) -> Agent:
    cfg = load_config(
        None,
        device_id=device,
        broker_url=f"mqtt://127.0.0.1:{world.broker.port}",
        data_dir=world.tmp / device,
        store_public_key=world.key,
        chunk_size=4096,
        chunk_timeout_s=5.0,
        report_interval_s=0.5,
        retry_failed_s=300,
        prefetch=False,
        # normalised entropy >= 0 always holds: every frame is a hard-case candidate
        hard={"selectors": [{"kind": "entropy", "params": {"min_entropy": 0.0}}]},
    )
    loader = cloud_model_loader(
        public_key=world.store.public_key, store_dir=world.store.root, config=CFG
    )
    return Agent(cfg, hardware=cloud_hardware(), model_loader=loader)


def test_cloud_device_runs_the_store_model_on_ray_serve(ray_serve: str, world: Any) -> None:
    from ray import serve

    agent = agent_for(world, "cloud-1")
    reported = Watcher(world.broker.port, Topics.reported("cloud-1"), ReportedState)
    events = Watcher(world.broker.port, Topics.events("cloud-1"), Event)
    hard = Watcher(world.broker.port, Topics.hard("cloud-1"), HardSample)
    agent.start()
    try:
        assert agent.session.wait_connected(10)
        assert agent.hardware.target == "cloud-ray" and agent.hardware.cores >= 1
        d1 = desired(
            "cloud-1", 1, [("cam-9", "cls", "1.0.0", world.ref)], source=str(VIDEO), fps=10
        )
        publish_retained(world.broker.port, Topics.desired("cloud-1"), encode(d1))

        def loaded() -> Any:
            r = reported.last()
            return r if r is not None and r.applied_revision == 1 else None

        r = wait_for(loaded, 240)
        assert r.last_error is None
        assert [(m.algorithm, m.version, m.runtime, m.sha256) for m in r.models] == [
            ("cls", "1.0.0", "ray-serve", world.ref.sha256)
        ]
        # fetched over MQTT chunks and verified by the agent, deployed from the store
        assert agent.stats.get("bytes_fetched") == world.ref.size
        assert deployment_name("cls", "1.0.0") in serve.status().applications

        # frames go through the deployment and the package's event rule fires
        wait_for(lambda: agent.streams["cam-9"].frames >= 5, 120)
        ev = wait_for(events.last, 60)
        assert (ev.event, ev.stream, ev.algorithm, ev.model_version) == (
            "road_user_seen",
            "cam-9",
            "cls",
            "1.0.0",
        )
        sample = wait_for(hard.last, 60)  # hard cases leave through the outbox as on the edge
        assert (sample.stream, sample.algorithm, sample.model_version) == ("cam-9", "cls", "1.0.0")
        model = agent.models[("cls", "1.0.0", world.ref.sha256)].model
        info = model.handle.info.remote().result()
        served = sum(int(k) * v for k, v in info["batch_sizes"].items())
        assert served >= agent.streams["cam-9"].frames  # + warm-up and probe frames
        wait_for(lambda: reported.last().streams and reported.last().streams[0].frames > 0)
        assert reported.last().streams[0].state == "running"

        # a package signed by another key: refused before anything is deployed,
        # with the edge's message; the running model stays
        (world.tmp / "other").mkdir(exist_ok=True)
        other = Keys(world.tmp / "other")
        archive, bad_ref, _ = build_package(world.tmp, other, algorithm="evil", version="6.6.7")
        world.srv.add(archive)
        d2 = desired(
            "cloud-1",
            2,
            [("cam-9", "cls", "1.0.0", world.ref), ("cam-10", "evil", "6.6.7", bad_ref)],
            source=str(VIDEO),
            fps=10,
        )
        publish_retained(world.broker.port, Topics.desired("cloud-1"), encode(d2))

        def failed() -> Any:
            r = reported.last()
            return r if r.last_error and r.last_error.startswith("revision 2:") else None

        r = wait_for(failed, 60)
        assert "signed by key" in r.last_error, r.last_error
        assert "stream cam-10: evil 6.6.7" in r.last_error
        assert r.applied_revision == 1
        assert [(m.algorithm, m.runtime) for m in r.models] == [("cls", "ray-serve")]
        assert deployment_name("evil", "6.6.7") not in serve.status().applications
        assert agent.stats.get("update_failures.signature_invalid") == 1
        frames = agent.streams["cam-9"].frames
        wait_for(lambda: agent.streams["cam-9"].frames > frames, 60)  # still running
    finally:
        agent.stop()
        for run in list(agent.models.values()):
            run.model.close()
        for w in (reported, events, hard):
            w.close()
        publish_retained(world.broker.port, Topics.desired("cloud-1"), b"")
    # the agent created the application: closing its model deleted it
    wait_for(lambda: deployment_name("cls", "1.0.0") not in serve.status().applications, 60)


def cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", "from cloud.cli import main; main()", "cameras", "run", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        **kw,
    )


def test_cli_bad_inputs_exit_2(world: Any, tmp_path: Path) -> None:
    common = [
        "--device",
        "cloud-x",
        "--data-dir",
        str(tmp_path / "d"),
        "--store-dir",
        str(world.store.root),
    ]
    cases = [
        (["--broker", "http://nope", "--store-key", str(world.key)], "broker_url must look like"),
        (
            ["--broker", f"mqtt://127.0.0.1:{free_port()}", "--store-key", str(world.key)],
            "cannot be reached",
        ),
        (["--store-key", str(tmp_path / "missing.pub")], "does not exist"),
        (
            [
                "--broker",
                f"mqtt://127.0.0.1:{world.broker.port}",
                "--store-key",
                str(world.key),
                "--ray-address",
                f"127.0.0.1:{free_port()}",
            ],
            "no Ray at 127.0.0.1",
        ),
    ]
    procs = [(cli(*common, *args), want) for args, want in cases]
    for p, want in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 2, (want, err[-2000:])
        assert err.strip().splitlines()[-1].startswith("error: ") and want in err, err[-2000:]
    p = cli(
        "--device",
        "cloud-x",
        "--store-key",
        str(world.key),
        "--store-dir",
        str(tmp_path / "no-store"),
    )
    _, err = p.communicate(timeout=180)
    assert p.returncode == 2 and "no store at" in err


def test_cli_runs_a_cloud_device_on_the_same_ray(
    ray_serve: str, world: Any, tmp_path: Path
) -> None:
    """``citybrain cameras run`` joins the test's Ray (a second driver), applies
    its desired state and stops cleanly on SIGTERM with a final summary."""
    reported = Watcher(world.broker.port, Topics.reported("cloud-2"), ReportedState)
    p = cli(
        "--device",
        "cloud-2",
        "--broker",
        f"mqtt://127.0.0.1:{world.broker.port}",
        "--store-key",
        str(world.key),
        "--store-dir",
        str(world.store.root),
        "--data-dir",
        str(tmp_path / "cloud-2"),
        "--ray-address",
        ray_serve,
        "--replica-cpus",
        "0.25",
        "--interval",
        "1",
    )
    try:
        d = desired("cloud-2", 1, [("cam-3", "cls", "1.0.0", world.ref)], source=str(FOLDER), fps=5)
        publish_retained(world.broker.port, Topics.desired("cloud-2"), encode(d))

        def running() -> Any:
            r = reported.last()
            return r if r and r.streams and r.streams[0].frames > 0 else None

        r = wait_for(running, 240)
        assert r.last_error is None and [m.runtime for m in r.models] == ["ray-serve"]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        reported.close()
        publish_retained(world.broker.port, Topics.desired("cloud-2"), b"")
    assert p.returncode == 0, err[-3000:]
    final = json.loads([ln for ln in err.splitlines() if ln.startswith('{"final"')][-1])
    assert final["models"] == ["cls@1.0.0 (ray-serve)"] and final["streams"]["cam-3"]["frames"] > 0
