"""Preflight checks and the local services the demo starts when none answers.

Every process started here runs in its own process group and is stopped
(SIGTERM, then SIGKILL) by :meth:`Services.close`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from cloud.demo._errors import PreflightError


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_data_dir(path: Path) -> Path:
    """The data dir exists (created if missing) and is writable, else PreflightError."""
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PreflightError(
            f"data dir {path} is not writable ({e.strerror or e}): "
            "pass --data-dir with a folder you can write to",
            field="--data-dir",
        ) from None
    return path


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    if port_answers(port, host):
        raise PreflightError(
            f"port {port} is taken (something answers on {host}:{port}): "
            "stop it or pass --port with a free port",
            field="--port",
        )
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PreflightError(
                f"port {port} cannot be bound on {host} ({e.strerror}): pass --port with a free port",
                field="--port",
            ) from None


def redis_answers(url: str) -> bool:
    import redis

    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        ok = bool(r.ping())
        r.close()
        return ok
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def mqtt_answers(url: str) -> bool:
    u = urlparse(url)
    return bool(u.hostname) and port_answers(u.port or 1883, u.hostname or "127.0.0.1")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the demo process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Services:
    """Processes started by the demo (stopped in reverse order by :meth:`close`)."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    tmp: list[Path] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, log: Path
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - owned by the process
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: killed as a whole
            preexec_fn=_die_with_parent,
        )
        out.close()
        self.procs.append((name, p))
        return p

    def close(self) -> list[str]:
        """Stop every process (group) started here; returns what was stopped."""
        stopped = []
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(10)
                stopped.append(name)
        self.procs.clear()
        for d in self.tmp:
            shutil.rmtree(d, ignore_errors=True)
        self.tmp.clear()
        return stopped


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
            raise PreflightError(f"{what} exited at start (code {proc.returncode}): {tail.strip()}")
        time.sleep(0.1)
    raise PreflightError(f"{what} did not answer within {timeout:.0f}s (log: {log})")


def _need_binary(name: str) -> str:
    path = shutil.which(name)
    for folder in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):  # sbin is often off PATH
        if path is None and os.access(f"{folder}/{name}", os.X_OK):
            path = f"{folder}/{name}"
    if path is None:
        raise PreflightError(
            f"{name} is not reachable at the configured URL and not on PATH: "
            "run scripts/setup.sh (installs redis-server and mosquitto), or set "
            f"CITYBRAIN_{'REDIS' if 'redis' in name else 'MQTT'}_URL to a running one",
            field=name,
        )
    return path


def ensure_redis(url: str, services: Services, logs: Path) -> tuple[str, bool]:
    """(usable Redis URL, started here?)."""
    if redis_answers(url):
        return url, False
    binary = _need_binary("redis-server")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="citybrain-demo-redis-"))
    services.tmp.append(work)
    log = logs / "redis.log"
    p = services.spawn(
        "redis-server",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        log=log,
    )
    new = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: redis_answers(new), 20, "redis-server", p, log)
    return new, True


def ensure_mosquitto(url: str, services: Services, logs: Path) -> tuple[str, bool]:
    """(usable broker URL, started here?)."""
    if mqtt_answers(url):
        return url, False
    binary = _need_binary("mosquitto")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="citybrain-demo-mqtt-"))
    services.tmp.append(work)
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 1000\nmax_queued_messages 100000\n"
    )
    log = logs / "mosquitto.log"
    p = services.spawn("mosquitto", [binary, "-c", str(conf)], log=log)
    _wait(lambda: port_answers(port), 20, "mosquitto", p, log)
    return f"mqtt://127.0.0.1:{port}", True
