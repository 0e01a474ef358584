"""Hard-sample ingest, end to end, while the broker is SIGKILLed and restarted.

N publisher clients (threads; paho MQTT v5, QoS 1, clean start off, stable
client ids, each re-sending what is not done yet) send M hard samples each to a
Mosquitto started here (persistence on, its own port and directory), which is
killed with SIGKILL and restarted R times along the way. A real
``citybrain ingest`` process stores them. At the end every sample id must be in
the catalog exactly once.

A device is done with a sample when the cloud's ``HardSampleReceipt`` names it
(``--mode receipt``, default: end to end), or on the broker's PUBACK
(``--mode puback``). PUBACK alone is not enough under SIGKILL: Mosquitto (2.0)
acknowledges a publish before its next autosave and does not restore shared
subscriptions from its persistence file (a PUBACK then says 0x10 "no matching
subscribers"), so ``--mode puback`` shows what is lost that way.

    .venv/bin/python benchmarks/ingest_bench.py                 # 50 x 200, 5 restarts
    .venv/bin/python benchmarks/ingest_bench.py --publishers 10 --samples 100 --restarts 2
    .venv/bin/python benchmarks/ingest_bench.py --mode puback

Prints samples/s (first publish -> last sample committed), lost, duplicated.
The integration test tests/integration/test_ingest_reliability.py runs the
same harness with small sizes.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ALGORITHM = "bench-alg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str:
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"):
        if os.path.exists(p):
            return p
    return "mosquitto"


class Broker:
    """A Mosquitto with persistence on, in its own directory, that can be SIGKILLed."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # stay the invoking user (as root, mosquitto would switch to an
            # account that cannot write this directory)
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "persistence_file mosquitto.db\n"
            # save the in-memory state every second (saving on every change costs
            # a full snapshot per queued message; what a crash loses in between is
            # re-sent by the devices, which wait for the cloud's receipt)
            "autosave_on_changes false\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"  # 0 (no limit) stalls delivery in mosquitto 2.0.11
            "max_queued_bytes 0\n"
            "max_inflight_messages 1000\n"
            "persistent_client_expiration 1d\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not port_answers(self.port):
            if self.proc.poll() is not None:
                log = (self.dir / "mosquitto.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto does not answer on {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def restart(self, down_s: float = 0.3) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def base_jpeg() -> bytes:
    from PIL import Image

    img = Image.new("RGB", (48, 32), (90, 140, 200))
    for x in range(48):
        img.putpixel((x, x % 32), (255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def unique_jpeg(base: bytes, tag: str) -> bytes:
    """``base`` with a comment segment naming ``tag``: a distinct, valid JPEG."""
    comment = tag.encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


def hard_sample_payload(device: str, sample_id: str, jpeg: bytes, n: int) -> bytes:
    import base64

    from edge_agent.protocol import HardSample, encode

    return encode(
        HardSample(
            id=sample_id,
            device=device,
            stream=f"cam-{n % 4}",
            algorithm=ALGORITHM,
            model_version="1.2.0",
            selector="low_confidence",
            reason="top score 0.41 in band [0.3, 0.6]",
            scores={"top": 0.41, "margin": 0.05},
            image_jpeg_b64=base64.b64encode(jpeg).decode(),
        )
    )


@dataclass
class PublisherStats:
    acked: int = 0  # done: receipt (receipt mode) or successful PUBACK (puback mode)
    sends: int = 0
    retries: int = 0
    refused: int = 0  # PUBACK "no matching subscribers" (or an error code)
    rejected: int = 0  # receipts saying the cloud refused a sample
    errors: list[str] = field(default_factory=list)


class Publisher(threading.Thread):
    """One device: publishes its samples with QoS 1 and re-sends each until it is
    done, at most ``window`` at a time.

    ``mode="receipt"``: done when a ``HardSampleReceipt`` names it (end to end:
    committed in the catalog); re-sent after ``retry_s`` without one.
    ``mode="puback"``: done on a successful PUBACK (the broker took it); a PUBACK
    "no matching subscribers" (0x10) or an error code means re-send.
    """

    def __init__(
        self,
        idx: int,
        port: int,
        samples: list[tuple[str, bytes]],
        acked_total: Callable[[], None],
        *,
        mode: str = "receipt",
        window: int = 20,
        retry_s: float = 10.0,
        refused_retry_s: float = 0.5,
        deadline_s: float = 600,
    ) -> None:
        super().__init__(name=f"publisher-{idx}", daemon=True)
        if mode not in ("receipt", "puback"):
            raise ValueError(f"mode must be receipt or puback, got {mode!r}")
        self.device = f"dev-{idx:03d}"
        self.port = port
        self.samples = samples
        self.on_ack = acked_total
        self.mode = mode
        self.window = window
        self.retry_s = retry_s
        self.refused_retry_s = refused_retry_s
        self.deadline_s = deadline_s
        self.stats = PublisherStats()
        self.done = threading.Event()

    def run(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from edge_agent.protocol import HardSampleReceipt, ProtocolError, Topics, decode

        topic = Topics.hard(self.device)
        receipt_topic = Topics.hard_receipt(self.device)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{self.device}", protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(self.window)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        lock = threading.Lock()
        # PUBACK reason codes by mid
        reasons: dict[int, int] = {}
        receipted: set[str] = set()

        def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
            reasons[mid] = rc.value

        def on_connect(c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure and self.mode == "receipt":
                c.subscribe(receipt_topic, qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                r = decode(msg.payload, HardSampleReceipt)
            except ProtocolError:
                return
            with lock:
                receipted.update(r.stored)
                receipted.update(r.rejected)
                self.stats.rejected += len(r.rejected)

        client.on_publish = on_publish
        client.on_connect = on_connect
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect_async(
            "127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props
        )
        client.loop_start()
        pending: dict[str, tuple[Any, float, bytes]] = {}
        end = time.monotonic() + self.deadline_s
        while not client.is_connected() and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.2)  # SUBACK of the receipt topic

        def puback_state(info: Any) -> str:
            if info is None:
                return "resend"
            try:
                done = info.is_published()
            except (RuntimeError, ValueError):  # sent while disconnected: paho
                return "wait"  # queues it, but this handle never turns true
            if not done:
                return "wait"
            rc = reasons.pop(info.mid, 0)
            return "resend" if rc == 0x10 or rc >= 0x80 else "acked"

        def reap() -> None:
            now = time.monotonic()
            for sid, (info, sent, payload) in list(pending.items()):
                st = puback_state(info)
                if st == "resend" and info is not None:
                    pending[sid] = (None, now, payload)  # refused: retry shortly
                    self.stats.refused += 1
                    continue
                if self.mode == "receipt":
                    with lock:
                        done = sid in receipted
                    st = "acked" if done else ("resend" if st == "resend" else "wait")
                if st == "acked":
                    del pending[sid]
                    self.stats.acked += 1
                    self.on_ack()
                    continue
                wait = self.refused_retry_s if st == "resend" else self.retry_s
                if now - sent > wait and client.is_connected():
                    pending[sid] = (client.publish(topic, payload, qos=1), now, payload)
                    self.stats.retries += 1
                    self.stats.sends += 1

        try:
            for sid, payload in self.samples:
                while len(pending) >= self.window and time.monotonic() < end:
                    reap()
                    time.sleep(0.03)
                pending[sid] = (client.publish(topic, payload, qos=1), time.monotonic(), payload)
                self.stats.sends += 1
            while pending and time.monotonic() < end:
                reap()
                time.sleep(0.05)
            if pending:
                self.stats.errors.append(f"{len(pending)} never acknowledged")
        except Exception as e:  # report, do not hang the run
            self.stats.errors.append(repr(e))
        finally:
            client.disconnect()
            client.loop_stop()
            self.done.set()


class IngestProcess:
    """``citybrain ingest`` as a real process on the given data dir."""

    def __init__(self, data_dir: Path, broker_url: str, log_path: Path, **opts: Any) -> None:
        self.env = dict(os.environ)
        self.env.update(CITYBRAIN_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO))
        self.env.pop("CITYBRAIN_DB_URL", None)
        self.cmd = [
            str(Path(sys.executable).with_name("citybrain")),
            "ingest",
            "--broker",
            broker_url,
            "--client-id",
            opts.get("client_id", "bench-ingest"),
            "--batch-size",
            str(opts.get("batch_size", 100)),
            "--batch-ms",
            str(opts.get("batch_ms", 100)),
            "--log-level",
            "info",
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=out, stderr=out)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def catalog_counts(db_path: Path) -> tuple[list[str], int]:
    """(idempotency keys of the field pool's samples, membership rows)."""
    if not db_path.exists():
        return [], 0
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT s.idempotency_key FROM dataset_samples ds "
            "JOIN samples s ON s.id = ds.sample_id JOIN datasets d ON d.id = ds.dataset_id "
            "WHERE d.name = ? AND ds.pool = 'field_hard'",
            (f"field-{ALGORITHM}",),
        ).fetchall()
    except sqlite3.OperationalError:  # schema not there yet
        return [], 0
    finally:
        con.close()
    return [r[0] for r in rows], len(rows)


def run(
    publishers: int,
    samples: int,
    restarts: int,
    *,
    workdir: Path,
    ingest_kills: int = 0,
    mode: str = "receipt",
    timeout_s: float = 900,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the scenario; returns figures (and ``missing`` / ``dup_keys`` lists)."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker")
    broker.start()
    # migrate the catalog once before the consumer starts
    env_before = os.environ.get("CITYBRAIN_DATA_DIR")
    os.environ["CITYBRAIN_DATA_DIR"] = str(data_dir)
    try:
        from cloud.catalog import Catalog
        from cloud.core.config import Settings

        Catalog.open(Settings()).close()
    finally:
        if env_before is None:
            os.environ.pop("CITYBRAIN_DATA_DIR", None)
        else:
            os.environ["CITYBRAIN_DATA_DIR"] = env_before
    ingest = IngestProcess(data_dir, broker.url, workdir / "ingest.log")
    ingest.start()
    # messages published before the consumer's first subscription reach no one:
    # wait until its (persistent) session has subscribed
    deadline = time.monotonic() + 60
    while "subscribed" not in (workdir / "ingest.log").read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError("ingest did not connect: " + (workdir / "ingest.log").read_text())
        time.sleep(0.1)
    time.sleep(0.5)

    base = base_jpeg()
    expected: set[str] = set()
    pubs: list[Publisher] = []
    lock = threading.Lock()
    acked = [0]

    def on_ack() -> None:
        with lock:
            acked[0] += 1

    for i in range(publishers):
        items = []
        for n in range(samples):
            sid = f"s-{i:03d}-{n:05d}"
            expected.add(sid)
            items.append((sid, hard_sample_payload(f"dev-{i:03d}", sid, unique_jpeg(base, sid), n)))
        pubs.append(Publisher(i, broker.port, items, on_ack, mode=mode))
    total = publishers * samples
    t0 = time.monotonic()
    for p in pubs:
        p.start()

    # kill the broker at evenly spread fractions of progress, and the consumer half
    # way between two broker kills: a consumer crash followed by a broker crash
    # before the broker's next save loses the consumer's in-flight messages
    # (mosquitto persists in-flight deliveries only with its next autosave)
    events = sorted(
        [((k + 1) / (restarts + 1), "broker") for k in range(restarts)]
        + [((k % (restarts + 1) + 0.5) / (restarts + 1), "ingest") for k in range(ingest_kills)]
    )
    for frac, what in events:
        while acked[0] < frac * total and not all(p.done.is_set() for p in pubs):
            time.sleep(0.05)
        if what == "broker":
            log(f"  SIGKILL broker at {acked[0]}/{total} acknowledged")
            broker.restart()
        else:
            log(f"  SIGKILL ingest at {acked[0]}/{total} acknowledged")
            ingest.kill()
            time.sleep(0.3)
            ingest.start()
    for p in pubs:
        p.join(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
    t_published = time.monotonic() - t0
    db = data_dir / "catalog.db"
    keys: list[str] = []
    rows = 0
    last_change = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        new_keys, new_rows = catalog_counts(db)
        if new_rows != rows:
            last_change = time.monotonic()
        keys, rows = new_keys, new_rows
        if set(keys) >= expected or time.monotonic() - last_change > 30:
            break
        time.sleep(0.2)
    t_end = time.monotonic() - t0
    ingest.stop()
    broker.stop()
    got = set(keys)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    dup_keys = sorted(k for k, c in counts.items() if c > 1)
    missing = sorted(expected - got)
    return {
        "publishers": publishers,
        "mode": mode,
        "samples_per_publisher": samples,
        "total": total,
        "broker_restarts": broker.kills,
        "ingest_kills": ingest_kills,
        "stored": len(got & expected),
        "lost": len(missing),
        "duplicated": len(dup_keys) + (rows - len(keys)),
        "unexpected": len(got - expected),
        "publish_s": round(t_published, 2),
        "end_to_end_s": round(t_end, 2),
        "samples_per_s": round(len(got & expected) / t_end, 1) if t_end else 0.0,
        "publisher_retries": sum(p.stats.retries for p in pubs),
        "pubacks_no_subscriber": sum(p.stats.refused for p in pubs),
        "publisher_errors": [e for p in pubs for e in p.stats.errors],
        "missing": missing[:20],
        "dup_keys": dup_keys[:20],
        "ingest_log_tail": (workdir / "ingest.log").read_text(errors="replace")[-1500:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--publishers", type=int, default=50)
    ap.add_argument("--samples", type=int, default=200, help="per publisher")
    ap.add_argument("--restarts", type=int, default=5, help="broker SIGKILL + restart count")
    ap.add_argument("--ingest-kills", type=int, default=0, help="consumer SIGKILL + restart")
    ap.add_argument(
        "--mode",
        choices=["receipt", "puback"],
        default="receipt",
        help="a device is done with a sample on the cloud's receipt (end to end) "
        "or on the broker's PUBACK",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    print(
        f"ingest bench: {a.publishers} publishers x {a.samples} samples, "
        f"{a.restarts} broker SIGKILLs, {a.ingest_kills} ingest SIGKILLs, "
        f"devices done on {a.mode} ({work})"
    )
    r = run(
        a.publishers,
        a.samples,
        a.restarts,
        workdir=work,
        ingest_kills=a.ingest_kills,
        mode=a.mode,
    )
    tail = r.pop("ingest_log_tail")
    print(json.dumps(r, indent=2))
    print(
        f"RESULT samples/s end-to-end: {r['samples_per_s']}  lost: {r['lost']}  "
        f"duplicated: {r['duplicated']}  ({r['total']} samples, {r['end_to_end_s']} s, "
        f"{r['broker_restarts']} broker restarts)"
    )
    if r["lost"] or r["duplicated"]:
        print("ingest log tail:\n" + tail)
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if r["lost"] or r["duplicated"] else 0)


if __name__ == "__main__":
    main()
