"""``citybrain store``: keys, packages, channels, rollouts, chunk serving.

The store lives in ``<data_dir>/store`` (``settings.store_dir``); its signing
key is ``settings.store_key_file`` or ``<store_dir>/key`` (public: ``key.pub``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Algorithm store: signed packages, channels, rollouts.", no_args_is_help=True
)
rollout_app = typer.Typer(help="Staged rollouts through device groups.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")


def _paths() -> tuple[Path, Path]:
    from cloud.core.config import get_settings

    s = get_settings()
    return s.store_dir, (s.store_key_file or s.store_dir / "key")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """algorithm_store errors -> the cloud error tree (exit 2, one line)."""
    from algorithm_store import StoreError
    from cloud import errors as ce

    try:
        yield
    except StoreError as e:
        cls = {
            "not_found": ce.NotFound,
            "conflict": ce.Conflict,
            "forbidden": ce.Forbidden,
            "unavailable": ce.Unavailable,
        }.get(e.kind, ce.InvalidInput)
        raise cls(e.message, field=e.field) from None


def _store(*, need_private: bool = False, announce_url: str | None = None) -> Any:
    import algorithm_store as st

    root, key_path = _paths()
    private = None
    if key_path.is_file():
        private = st.load_private_key(key_path)
        public = st.public_key_raw(private)
    elif st.public_key_path(key_path).is_file():
        public = st.load_public_key(st.public_key_path(key_path))
    else:
        raise st.KeyProblem(
            f"{key_path}: no store key; create one with `citybrain store keygen`", field="key"
        )
    if need_private and private is None:
        raise st.KeyProblem(f"{key_path}: the private key is needed here", field="key")
    announcer = st.MqttAnnouncer(announce_url) if announce_url else None
    return st.AlgorithmStore(root, public_key=public, private_key=private, announcer=announcer)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def keygen(force: bool = typer.Option(False, help="replace an existing key (dangerous)")) -> None:
    """Create the store's ed25519 signing key (never overwrites one without --force)."""
    import algorithm_store as st

    with _errors():
        _, key_path = _paths()
        path = st.keygen(key_path.parent, name=key_path.name, force=force)
        pub = st.load_public_key(st.public_key_path(path))
    from edge_agent.protocol import key_id

    typer.echo(f"private key: {path} (mode 0600)")
    typer.echo(f"public key:  {st.public_key_path(path)}  key id {key_id(pub)}")


def _kv(items: list[str], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        k, sep, v = item.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            sep = ""
        if not sep or not k:
            from cloud.errors import InvalidInput

            raise InvalidInput(f"{what} {item!r}: expected NAME=NUMBER", field=what)
    return out


@app.command()
def publish(
    source: Path = typer.Argument(..., help="a package archive (.tar) or an ONNX model"),
    channel: str | None = typer.Option(None, help="point this channel at the new version"),
    id: str | None = typer.Option(None, "--id", help="algorithm id (ONNX source)"),
    version: str | None = typer.Option(None, help="semantic version (ONNX source)"),
    task: str = typer.Option("classify", help="classify | detect"),
    labels: str | None = typer.Option(None, help="comma-separated labels (ONNX source)"),
    scene: list[str] = typer.Option([], help="scene tag (repeatable)"),
    detects: list[str] = typer.Option([], help="object/event detected (repeatable)"),
    metric: list[str] = typer.Option([], help="NAME=VALUE evaluation metric (repeatable)"),
    input_json: str | None = typer.Option(
        None, "--input", help="input spec JSON (default: read from the ONNX graph)"
    ),
    preprocess_json: str | None = typer.Option(None, "--preprocess", help="preprocess JSON"),
    postprocess_json: str | None = typer.Option(None, "--postprocess", help="postprocess JSON"),
    golden_input: Path | None = typer.Option(None, help="real sample .npy as golden input"),
    dataset_version: str | None = typer.Option(None, help="lineage: dataset version"),
    training_task: str | None = typer.Option(None, help="lineage: training task"),
    fps: float = typer.Option(2.0, help="rate it should run at per stream"),
    out_dir: Path | None = typer.Option(None, help="where the built archive goes"),
    mqtt_url: str | None = typer.Option(None, help="announce channel changes on this broker"),
) -> None:
    """Publish a package archive, or build + sign + publish one from an ONNX model."""
    import algorithm_store as st
    from cloud.errors import InvalidInput

    with _errors():
        store = _store(need_private=source.suffix == ".onnx", announce_url=mqtt_url)
        archive = source
        if source.suffix == ".onnx":
            missing = [
                n for n, v in (("--id", id), ("--version", version), ("--labels", labels)) if not v
            ]
            if missing:
                raise InvalidInput(
                    f"publishing an ONNX model needs {', '.join(missing)}", field=missing[0]
                )
            assert id and version and labels
            built = st.build_package(
                source,
                id=id,
                version=version,
                task=task,
                labels=[x.strip() for x in labels.split(",") if x.strip()],
                private_key=store.private_key,
                out_dir=out_dir or (store.root / "builds"),
                input=json.loads(input_json) if input_json else None,
                preprocess=json.loads(preprocess_json) if preprocess_json else None,
                postprocess=json.loads(postprocess_json) if postprocess_json else None,
                scenes=scene,
                detects=detects,
                fps=fps,
                metrics=_kv(metric, "metric"),
                lineage={"dataset_version": dataset_version, "training_task": training_task},
                golden_input=golden_input,
            )
            archive = built.archive
            typer.echo(f"built {archive} ({built.size} bytes)")
        v = store.publish(archive, channel=channel)
    typer.echo(
        f"published {v.algorithm} {v.version} sha256 {v.sha256} ({v.size} bytes)"
        + (f" on {channel}" if channel else "")
    )


@app.command("list")
def list_() -> None:
    """Algorithms, their versions and channels."""
    with _errors():
        algos = _store().algorithms()
    if not algos:
        typer.echo("no algorithms published")
    for a in algos:
        ch = ", ".join(f"{c}={v}" for c, v in a["channels"].items()) or "-"
        typer.echo(f"{a['id']}\tlatest {a['latest']}\tversions {len(a['versions'])}\tchannels {ch}")


@app.command()
def show(algorithm: str, version: str | None = typer.Argument(None)) -> None:
    """One algorithm (versions, channels, rollouts) or one version's manifest."""
    with _errors():
        store = _store()
        if version:
            v = store.version(algorithm, version)
            _echo_json(
                {
                    "artifact": {"sha256": v.sha256, "size": v.size},
                    "channels": list(v.channels),
                    "manifest": v.manifest.model_dump(mode="json", by_alias=True),
                }
            )
            return
        versions = store.versions(algorithm)
        _echo_json(
            {
                "id": algorithm,
                "channels": store.channels(algorithm),
                "versions": [
                    {
                        "version": v.version,
                        "channels": list(v.channels),
                        "metrics": v.manifest.metrics,
                        "targets": sorted(v.manifest.cost),
                        "engines": [e.file for e in v.manifest.engines],
                        "sha256": v.sha256,
                    }
                    for v in versions
                ],
                "rollouts": [
                    {"id": r.id, "version": r.version, "channel": r.channel, "state": r.state}
                    for r in store.rollouts(algorithm)
                ],
            }
        )


@app.command()
def promote(
    algorithm: str,
    version: str,
    channel: str,
    reason: str = typer.Option("", help="recorded in the transitions log"),
    mqtt_url: str | None = typer.Option(None, help="announce on this broker"),
) -> None:
    """Point CHANNEL at VERSION (refuses a downgrade: use rollback)."""
    with _errors():
        prev = _store(announce_url=mqtt_url).promote(algorithm, version, channel, reason=reason)
    typer.echo(f"{algorithm} {channel}: {prev or '-'} -> {version}")


@app.command()
def rollback(
    algorithm: str,
    channel: str,
    version: str | None = typer.Option(None, help="default: the version before the current"),
    reason: str = typer.Option("", help="recorded in the transitions log"),
    mqtt_url: str | None = typer.Option(None, help="announce on this broker"),
) -> None:
    """Explicitly move CHANNEL back to an older version."""
    with _errors():
        store = _store(announce_url=mqtt_url)
        before = store.channels(algorithm).get(channel)
        v = store.rollback(algorithm, channel, version, reason=reason)
    typer.echo(f"{algorithm} {channel}: {before} -> {v} (rollback)")


@app.command()
def verify(
    archive: Path,
    public_key: Path | None = typer.Option(None, help="raw public key file (default: store's)"),
) -> None:
    """Verify an archive: signature, hashes, onnx.checker, golden check."""
    import algorithm_store as st

    with _errors():
        if public_key is not None:
            pub = st.load_public_key(public_key)
        else:
            pub = _store().public_key
        m = st.verify_archive(archive, pub)
    typer.echo(f"ok: {m.id} {m.version} signed by {m.signature.key_id if m.signature else '?'}")


def _parse_group(spec: str) -> dict[str, Any]:
    from cloud.errors import InvalidInput

    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InvalidInput(f"--group {spec!r}: expected NAME=dev1,dev2 or NAME=25%", field="group")
    if rest.endswith("%"):
        try:
            return {"name": name, "percent": float(rest[:-1])}
        except ValueError:
            raise InvalidInput(f"--group {spec!r}: bad percentage", field="group") from None
    return {"name": name, "devices": [d.strip() for d in rest.split(",") if d.strip()]}


@rollout_app.command("start")
def rollout_start(
    algorithm: str,
    version: str,
    channel: str,
    group: list[str] = typer.Option(..., help="NAME=dev1,dev2 or NAME=25% (repeat, in order)"),
    devices: str | None = typer.Option(None, help="comma-separated fleet for % groups"),
    success_gate: float = typer.Option(0.9, help="share of a group healthy to advance"),
    error_gate: float = typer.Option(0.2, help="share of started devices failed to abort"),
    reason: str = typer.Option(""),
    mqtt_url: str | None = typer.Option(None, help="announce on this broker"),
) -> None:
    """Start a staged rollout of VERSION to CHANNEL."""
    with _errors():
        r = _store(announce_url=mqtt_url).start_rollout(
            algorithm,
            version,
            channel,
            [_parse_group(g) for g in group],
            devices=[d.strip() for d in devices.split(",")] if devices else None,
            success_gate=success_gate,
            error_gate=error_gate,
            reason=reason,
        )
    typer.echo(f"rollout {r.id}: {r.algorithm} {r.version} -> {r.channel}, {r.state.value}")


@rollout_app.command("status")
def rollout_status(rollout_id: int | None = typer.Argument(None)) -> None:
    """Progress of one rollout (or all)."""
    with _errors():
        store = _store()
        rollouts = [store.rollout(rollout_id)] if rollout_id is not None else store.rollouts()
    for r in rollouts:
        typer.echo(
            f"rollout {r.id}: {r.algorithm} {r.from_version or '-'} -> {r.version} on "
            f"{r.channel}: {r.state.value} ({r.reason})"
        )
        for i, g in enumerate(r.groups):
            mark = ">" if i == r.current_group and r.state.value == "running" else " "
            typer.echo(
                f"  {mark} {g.name}: {len(g.devices)} devices, {g.healthy} healthy, "
                f"{g.failed} failed, {g.waiting} waiting{'' if g.started else ' (not started)'}"
            )


@rollout_app.command("abort")
def rollout_abort(rollout_id: int, reason: str = typer.Option("aborted by operator")) -> None:
    """Abort a rollout; devices of started groups go back to the channel's version."""
    with _errors():
        r = _store().abort_rollout(rollout_id, reason=reason)
    typer.echo(f"rollout {r.id}: {r.state.value}")


@app.command("serve-chunks")
def serve_chunks(
    mqtt_url: str | None = typer.Option(None, help="broker (default: settings.mqtt_url)"),
    reannounce_s: float = typer.Option(
        3600.0, help="re-send signed announcements this often (keeps them unexpired)"
    ),
    share_group: str | None = typer.Option(
        None,
        help="MQTT v5 shared-subscription group, to split requests over several servers "
        "(default with --workers > 1: 'store')",
    ),
    workers: int = typer.Option(
        1, min=1, max=64, help="serving processes on one shared subscription (1: in this process)"
    ),
    max_chunk_kib: int = typer.Option(
        4096, min=1, max=4096, help="largest chunk served (KiB); the broker's limit also applies"
    ),
) -> None:
    """Serve artifact chunks over MQTT (store/chunk/req -> dev/{d}/chunk) until stopped."""
    import algorithm_store as st
    from cloud.core.config import get_settings

    url = mqtt_url or get_settings().mqtt_url
    max_chunk = max_chunk_kib * 1024
    with _errors():
        store = _store()
        client = st.connect_mqtt(url)
        if store.private_key is not None:
            store.announcer = st.MqttAnnouncer(client)
        if workers > 1:
            service: Any = st.ChunkWorkers(
                store.root,
                url,
                workers=workers,
                share_group=share_group or "store",
                max_chunk=max_chunk,
            ).start()
        else:
            service = st.ChunkService(
                store, client, share_group=share_group, max_chunk=max_chunk
            ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    plural = "s" if workers > 1 else ""
    typer.echo(f"serving chunks of {store.root} on {url} ({workers} worker{plural})", err=True)
    next_announce = 0.0
    while not stop.is_set():
        if store.announcer is not None and time.monotonic() >= next_announce:
            store.announce_all()
            next_announce = time.monotonic() + reannounce_s
        if workers > 1:
            with _errors():
                service.revive()
        stop.wait(min(reannounce_s, 2.0) if workers > 1 else reannounce_s)
    service.stop()
    client.loop_stop()
    client.disconnect()
    typer.echo(f"stopped: {service.stats.served} chunks served", err=True)
