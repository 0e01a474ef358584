"""``citybrain fleet``: simulated edge fleets for scale and chaos tests, and the
fleet-state mirror (``watch``, ``devices``, ``forget``; see :mod:`cloud.fleet`).

The agents are real ``edge_agent`` agents (threads of this process) talking to
a real broker; only their cameras are replaced by ``--source``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import typer

app = typer.Typer(
    help="Simulated edge fleets; the fleet-state mirror (watch, devices, forget).",
    no_args_is_help=True,
)


def _default_store_key() -> Path:
    from cloud.core.config import get_settings

    s = get_settings()
    private = s.store_key_file or s.store_dir / "key"
    return private.with_name(private.name + ".pub")


@app.command()
def simulate(
    devices: int = typer.Option(..., "--devices", "-n", min=1, help="number of simulated agents"),
    broker: str = typer.Option(None, "--broker", help="broker URL; default settings.mqtt_url"),
    source: str = typer.Option(
        ..., "--source", help="video file, image folder or URL every stream reads"
    ),
    store_key: Path = typer.Option(
        None, "--store-key", help="pinned store public key; default <store_dir>/key.pub"
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="agents' data dirs go here; default <data_dir>/fleet"
    ),
    prefix: str = typer.Option("sim", "--prefix", help="device ids are PREFIX-0000, ..."),
    duration: float = typer.Option(
        0.0, "--duration", min=0, help="stop after this many seconds (0 = until Ctrl-C)"
    ),
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="seconds between summaries"),
    fetch_mode: str = typer.Option("mqtt", "--fetch-mode", help="mqtt or http"),
    http_base_url: str = typer.Option(None, "--http-base-url", help="store URL for http"),
    password: str = typer.Option(None, "--password", envvar="CITYBRAIN_FLEET_PASSWORD"),
    until_applied: int = typer.Option(
        None,
        "--until-applied",
        help="stop as soon as every device reports this desired revision (or --duration ends)",
    ),
    per_process: int = typer.Option(
        100, "--per-process", min=1, help="agents per child process (threads within each)"
    ),
) -> None:
    """Run N edge agents against a real broker; print a JSON summary every INTERVAL."""
    from cloud.core.config import get_settings
    from cloud.errors import InvalidInput

    settings = get_settings()
    broker = broker or settings.mqtt_url
    store_key = store_key or _default_store_key()
    data_dir = data_dir or settings.data_dir / "fleet"
    if not store_key.is_file():
        raise InvalidInput(f"store public key {store_key} does not exist", field="--store-key")
    if "://" not in source and not Path(source).exists():
        raise InvalidInput(f"source {source} does not exist", field="--source")
    if fetch_mode not in ("mqtt", "http"):
        raise InvalidInput(
            f"--fetch-mode must be mqtt or http, got {fetch_mode!r}", field="--fetch-mode"
        )

    from edge_agent import EdgeError, Fleet, ProcessFleet

    extra: dict[str, object] = {"fetch_mode": fetch_mode}
    if http_base_url:
        extra["http_base_url"] = http_base_url
    if password:
        extra["password"] = password
    common = dict(
        broker_url=broker,
        data_dir=data_dir,
        store_public_key=store_key,
        source=source,
        prefix=prefix,
        **extra,
    )
    fleet: Fleet | ProcessFleet
    try:
        if devices > per_process:
            fleet = ProcessFleet(
                devices, per_process=per_process, interval=min(interval, 1.0), **common
            )
        else:
            fleet = Fleet(devices, **common)  # type: ignore[arg-type]
        fleet.start()
    except EdgeError as e:
        raise InvalidInput(str(e)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            left = duration - (time.monotonic() - t0) if duration else interval
            if stop.wait(min(interval, max(left, 0))):
                break
            summary = fleet.summary()
            summary.pop("counters", None)
            typer.echo(json.dumps({"t": round(time.monotonic() - t0, 1), **summary}))
            revs = {int(k): v for k, v in summary["applied_revisions"].items()}
            if until_applied is not None and summary["devices"] == devices:
                if sum(v for k, v in revs.items() if k >= until_applied) == devices:
                    break
            if duration and time.monotonic() - t0 >= duration:
                break
    except KeyboardInterrupt:
        pass
    finally:
        final = fleet.summary()
        stopped = fleet.stop()
        typer.echo(json.dumps({"final": True, **(stopped or final)}, default=str))


@app.command()
def watch(
    broker: str = typer.Option(
        None, "--broker", help="mqtt://[user:pass@]host:port; default settings.mqtt_url"
    ),
    client_id: str = typer.Option(
        "citybrain-fleet-1", "--client-id", help="MQTT client id (unique per running mirror)"
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning"),
) -> None:
    """Mirror every device's status, reported state, events and hard samples into
    Redis (for /api/v1/devices, /api/v1/overview and the console) until stopped.
    Several may run side by side: each message is counted once."""
    from cloud.core._logging import configure_logging
    from cloud.core.config import get_settings
    from cloud.errors import InvalidInput
    from cloud.fleet import FleetMirror, MirrorConfig
    from cloud.ingest import parse_broker_url

    configure_logging(level=log_level, service="fleet-watch")
    settings = get_settings()
    url = broker or settings.mqtt_url
    try:
        parse_broker_url(url)
    except ValueError as e:
        raise InvalidInput(str(e), field="--broker") from None
    _check_redis(settings.redis_url)
    mirror = FleetMirror(settings, MirrorConfig(broker_url=url, client_id=client_id))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: mirror.request_stop())
    typer.echo(
        f"fleet watch {client_id}: {url} -> {settings.redis_url} ({settings.fleet_prefix})",
        err=True,
    )
    mirror.run_forever()
    typer.echo(f"fleet watch {client_id}: stopped {json.dumps(mirror.stats.as_dict())}", err=True)


def _check_redis(url: str):  # type: ignore[no-untyped-def]
    import redis

    from cloud.errors import Unavailable

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        client.close()
        raise Unavailable(
            f"Redis at {url} cannot be reached ({e}): start redis-server or set CITYBRAIN_REDIS_URL"
        ) from None
    return client


@app.command("devices")
def devices_cmd(
    state: str = typer.Option(None, "--state", help="only online, offline or unknown devices"),
) -> None:
    """Print the mirrored devices, one JSON object a line."""
    from cloud.core.config import get_settings
    from cloud.errors import InvalidInput
    from cloud.fleet import FleetStore

    if state not in (None, "online", "offline", "unknown"):
        raise InvalidInput(f"--state must be online, offline or unknown, got {state!r}")
    settings = get_settings()
    store = FleetStore(
        _check_redis(settings.redis_url), settings.fleet_prefix, settings.fleet_history_min
    )
    for rec in store.all_records():
        if state in (None, rec.state):
            typer.echo(rec.model_dump_json())


@app.command()
def forget(device: str = typer.Argument(..., help="device id")) -> None:
    """Drop a decommissioned device from the fleet state (it reappears if it reports)."""
    from cloud.core.config import get_settings
    from cloud.errors import NotFound
    from cloud.fleet import FleetStore

    settings = get_settings()
    store = FleetStore(
        _check_redis(settings.redis_url), settings.fleet_prefix, settings.fleet_history_min
    )
    if not store.forget(device):
        raise NotFound(f"no device {device!r} in the fleet state")
    typer.echo(f"forgot {device}")
