"""``citybrain cameras``: cameras without an edge device, run in the cloud.

``citybrain cameras run --device cloud-1`` runs a *cloud device*: the edge
agent (desired state on ``dev/cloud-1/desired``, packages fetched and verified
against the pinned store key, golden check, streams, event rules, hard
samples) with every model served by Ray Serve (:mod:`cloud.serving`,
``ServeModel``), so the scheduler can place the demands of cameras no edge
device reaches on a device that lives in the cloud. Give that device a cloud
hardware target in the graph (``cloud-ray`` by default, ``--target``).

Packages: with ``--api-url`` the agent downloads them over HTTP from the API's
store and the replicas read the same artifact URL; without it the agent
fetches MQTT chunks (the store's chunk service) and the replicas read the
store folder (``--store-dir``, default ``<data_dir>/store``). Ray: ``--ray-address``,
else ``CITYBRAIN_RAY_ADDRESS`` / ``RAY_ADDRESS``, else a local Ray started here.
Serve runs without its HTTP proxy (handles only).

A bad broker, a missing store key or store, an unreachable Ray: one line on
stderr, exit 2. While it runs a one-line summary goes to stderr every
``--interval`` seconds; SIGTERM / Ctrl-C stop it cleanly (the deployments it
created are deleted; ones that were already there, e.g. shared with
pre-labelling, stay).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Cameras without an edge device: a cloud device on Ray Serve.")


def _summary(agent: Any) -> dict[str, Any]:
    r = agent.reported()
    return {
        "device": r.device,
        "applied_revision": r.applied_revision,
        "models": [f"{m.algorithm}@{m.version} ({m.runtime})" for m in r.models],
        "streams": {
            s.stream: {"state": s.state, "frames": s.frames, "fps": s.fps} for s in r.streams
        },
        "events": agent.stats.get("events"),
        "last_error": r.last_error,
    }


@app.callback()
def _group() -> None:
    """Cameras without an edge device: a cloud device on Ray Serve."""


@app.command()
def run(
    device: str = typer.Option(..., "--device", help="device id of this cloud device"),
    broker: str = typer.Option(None, "--broker", help="broker URL; default settings.mqtt_url"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="agent state (cache, outbox); default <data_dir>/cameras/DEVICE"
    ),
    store_key: Path = typer.Option(
        None, "--store-key", help="pinned store public key; default <store key>.pub"
    ),
    api_url: str = typer.Option(
        None,
        "--api-url",
        help="API base URL (http://host:8000): packages over HTTP from its store, for the "
        "agent and the replicas; default: MQTT chunks + the store folder",
    ),
    store_dir: Path = typer.Option(
        None, "--store-dir", help="store folder replicas read without --api-url"
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Ray cluster; default CITYBRAIN_RAY_ADDRESS / RAY_ADDRESS"
    ),
    ray_cpus: int = typer.Option(
        None, "--ray-cpus", min=1, help="CPUs of a local Ray started here (default: all)"
    ),
    replica_cpus: float = typer.Option(1.0, "--replica-cpus", min=0.01, help="CPUs per replica"),
    max_replicas: int = typer.Option(1, "--max-replicas", min=1, help="autoscaling ceiling"),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="@serve.batch size"),
    target: str = typer.Option("cloud-ray", "--target", help="hardware target reported"),
    password: str = typer.Option(None, "--password", envvar="CITYBRAIN_CAMERAS_PASSWORD"),
    metrics_port: int = typer.Option(None, "--metrics-port", help="serve Prometheus /metrics"),
    interval: float = typer.Option(10.0, "--interval", min=0.1, help="seconds between summaries"),
    duration: float = typer.Option(
        0.0, "--duration", min=0, help="stop after this many seconds (0 = until stopped)"
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning"),
) -> None:
    """Run a cloud device: the edge agent with its models on Ray Serve."""
    from cloud.core._logging import configure_logging
    from cloud.core.config import get_settings
    from cloud.errors import InvalidInput, Unavailable
    from edge_agent import EdgeError, load_config

    settings = get_settings()
    configure_logging(level=log_level, service="cameras", device=device)
    broker = broker or settings.mqtt_url
    data_dir = data_dir or settings.data_dir / "cameras" / device
    if store_key is None:
        private = settings.store_key_file or settings.store_dir / "key"
        store_key = private.with_name(private.name + ".pub")
    if not store_key.is_file():
        raise InvalidInput(
            f"store public key {store_key} does not exist (copy the store's key.pub here or "
            "pass --store-key)",
            field="--store-key",
        )
    source: dict[str, Any]
    if api_url:
        if not api_url.startswith(("http://", "https://")):
            raise InvalidInput(f"--api-url must be http(s)://host:port, got {api_url!r}")
        base = api_url.rstrip("/")
        source = {"artifact_url": f"{base}/api/v1/store/artifacts"}
        fetch: dict[str, Any] = {"fetch_mode": "http", "http_base_url": base}
    else:
        folder = store_dir or settings.store_dir
        if not folder.is_dir():
            raise InvalidInput(
                f"no store at {folder}: pass --api-url (packages over HTTP) or --store-dir",
                field="--store-dir",
            )
        source = {"store_dir": folder.resolve()}
        fetch = {"fetch_mode": "mqtt"}
    extra: dict[str, Any] = {"password": password} if password else {}
    if metrics_port:
        extra["metrics_port"] = metrics_port
    try:
        cfg = load_config(
            None,
            device_id=device,
            broker_url=broker,
            data_dir=data_dir,
            store_public_key=store_key,
            prefer_gpu=False,
            tensorrt_build=False,
            **fetch,
            **extra,
        )
        public_key = cfg.load_store_key()
    except EdgeError as e:
        raise InvalidInput(str(e)) from None
    try:
        socket.create_connection((cfg.broker_host, cfg.broker_port), timeout=3).close()
    except OSError as e:
        raise Unavailable(
            f"broker {broker} cannot be reached ({e.strerror or e}): start Mosquitto or fix "
            "--broker / CITYBRAIN_MQTT_URL",
            field="--broker",
        ) from None

    from cloud.serving import ServingConfig, cloud_hardware, cloud_model_loader, start_serving
    from edge_agent import Agent

    config = ServingConfig(
        num_cpus=replica_cpus, max_replicas=max_replicas, max_batch_size=max_batch_size
    )
    typer.echo(f"cameras {device}: starting Ray Serve ...", err=True)
    address = start_serving(ray_address or settings.ray_address, num_cpus=ray_cpus)
    loader = cloud_model_loader(public_key=public_key, config=config, **source)
    try:
        agent = Agent(cfg, hardware=cloud_hardware(target), model_loader=loader)
        agent.start()
    except EdgeError as e:
        raise InvalidInput(str(e)) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    where = api_url or str(source.get("store_dir"))
    typer.echo(f"cameras {device}: Ray {address}, broker {broker}, packages from {where}", err=True)
    t0 = time.monotonic()
    try:
        if not agent.session.wait_connected(15):
            raise Unavailable(f"broker {broker} did not accept {device}", field="--broker")
        while not stop.is_set():
            left = duration - (time.monotonic() - t0) if duration else interval
            if stop.wait(min(interval, max(left, 0))):
                break
            typer.echo(json.dumps(_summary(agent)), err=True)
            if duration and time.monotonic() - t0 >= duration:
                break
    finally:
        final = _summary(agent)
        agent.stop()
        for run_ in list(agent.models.values()):
            run_.model.close()  # deletes the deployments this process created
        typer.echo(json.dumps({"final": True, **final}), err=True)
