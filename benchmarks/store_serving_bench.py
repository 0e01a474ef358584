"""Serving a published artifact to many concurrent downloaders over loopback.

Three servers side by side, same artifact, same client code:
  static  python's ThreadingHTTPServer + SimpleHTTPRequestHandler on the blob dir
  http    the store router (FastAPI + uvicorn): GET /artifacts/{sha256}, Range/ETag
  mqtt    the store chunk service through a private Mosquitto (256 KiB chunks,
          8 requests in flight per device, re-asked after 10 s unanswered)

For each: throughput of N concurrent full downloads, and bytes *sent* per device
(the serving process's /proc/<pid>/io wchar delta / N; for MQTT the broker's)
when every download is interrupted at 40 % and resumed.

    .venv/bin/python benchmarks/store_serving_bench.py                # 100 x 50 MB
    .venv/bin/python benchmarks/store_serving_bench.py --clients 20 --size-mb 10
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHUNK = 1 << 20  # HTTP read size
MQTT_CHUNK = 256 << 10
WINDOW = 8
INTERRUPT_AT = 0.4


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def tcp_bytes_received(sock) -> int:
    """Bytes this TCP socket received from the peer (Linux tcp_info
    tcpi_bytes_received), counting data delivered to the kernel but never read."""
    import socket
    import struct

    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    return struct.unpack_from("Q", info, 128)[0]


# -- setup ----------------------------------------------------------------------


def prepare(work: Path, size_mb: float):
    import algorithm_store as st
    from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs

    key = st.load_private_key(st.keygen(work / "keys"))
    model = tiny_classifier_onnx(
        work / "m" / "model.onnx", size=64, min_weight_bytes=int(size_mb * 1e6)
    )
    built = st.build_package(
        model,
        id="bench",
        version="1.0.0",
        private_key=key,
        out_dir=work / "out",
        profile=False,
        **tiny_package_kwargs(),
    )
    store = st.AlgorithmStore(work / "store", private_key=key)
    v = store.publish(built.archive, channel="stable")
    return store, v


def serve_http(root: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    import algorithm_store as st

    store = st.AlgorithmStore(root)
    app = FastAPI()
    app.include_router(st.make_router(store), prefix="/api/v1/store")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_mqtt(root: str, port: int) -> None:
    import signal

    import algorithm_store as st

    store = st.AlgorithmStore(root)
    svc = st.ChunkService(store, f"mqtt://127.0.0.1:{port}").start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    svc.stop()


# -- HTTP client ------------------------------------------------------------------


def _http_open(port: int, path: str, headers: dict[str, str]):
    """Send a GET on a raw socket; return (socket, status, headers, body bytes already read)."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise RuntimeError("connection closed before the response header")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return sock, int(status_line.split()[1]), hdrs, rest


def _read_body(sock, first: bytes, want: int, h) -> int:
    """Read up to ``want`` body bytes (``first`` already read); returns bytes consumed."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    got = min(len(first), want)
    if h and got:
        h.update(first[:got])
    while got < want:
        n = sock.recv_into(mv, min(CHUNK, want - got))
        if not n:
            break
        if h:
            h.update(mv[:n])
        got += n
    return got


def http_download(port: int, path: str, size: int, interrupt: bool, check: bool, **_) -> dict:
    """Download (optionally interrupted at 40 % and resumed). Returns the TCP
    bytes received from the server and the sha256 of the assembled body."""
    h = hashlib.sha256() if check else None
    sock, status, hdrs, first = _http_open(port, path, {})
    assert status == 200, status
    etag = hdrs.get("etag")
    stop_at = int(size * INTERRUPT_AT) if interrupt else size
    got = _read_body(sock, first, stop_at, h)
    tcp = tcp_bytes_received(sock)
    sock.close()
    if interrupt:
        headers = {"Range": f"bytes={got}-"}
        if etag:
            headers["If-Range"] = etag
        sock, status, hdrs, first = _http_open(port, path, headers)
        if status == 200:  # the server ignored Range: start over
            got = 0
            h = hashlib.sha256() if check else None
        else:
            assert status == 206, status
        got += _read_body(sock, first, size - got, h)
        tcp += tcp_bytes_received(sock)
        sock.close()
    assert got == size, (got, size)
    return {"tcp": tcp, "sha": h.hexdigest() if h else None}


# -- MQTT client ------------------------------------------------------------------


def mqtt_download(
    port: int,
    sha: str,
    size: int,
    interrupt: bool,
    check: bool,
    chunk: int = MQTT_CHUNK,
    window: int = WINDOW,
) -> dict:
    """A device fetching the artifact by chunks, ``window`` requests in flight;
    a request unanswered for 10 s is asked again (a loaded broker may drop
    queued messages), as a real device must."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge_agent.protocol import ChunkReplyHeader, ChunkRequest, Topics, encode

    device = f"bench-{uuid.uuid4().hex[:10]}"
    parts: dict[int, bytes | None] = {}
    state = {"next": 0, "have": 0, "stop_at": int(size * INTERRUPT_AT) if interrupt else size}
    outstanding: dict[int, float] = {}
    done = threading.Event()
    tcp = [0]
    retries = [0]
    lock = threading.Lock()

    def run_session(start: int) -> None:
        state["next"] = start
        done.clear()
        outstanding.clear()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()

        def send(c_: mqtt.Client, off: int) -> None:
            outstanding[off] = time.time()
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = Topics.chunk(device)
            props.CorrelationData = str(off).encode()
            req = ChunkRequest(device=device, sha256=sha, offset=off, length=chunk)
            c_.publish(Topics.CHUNK_REQUEST, encode(req), qos=1, properties=props)

        def ask(c_: mqtt.Client) -> None:
            off = state["next"]
            if off >= size:
                return
            state["next"] = off + chunk
            send(c_, off)

        def on_message(c_, ud, msg) -> None:
            hdr = ChunkReplyHeader.from_user_properties(msg.properties.UserProperty)
            assert hdr.status == "ok", hdr
            with lock:
                outstanding.pop(hdr.offset, None)
                if hdr.offset in parts:
                    return  # a duplicate after a retry
                parts[hdr.offset] = msg.payload if check else None
                state["have"] += hdr.length
                if state["have"] >= state["stop_at"] or state["have"] >= size:
                    done.set()
                    return
                ask(c_)

        c.on_message = on_message
        c.on_subscribe = lambda *a, **k: subscribed.set()
        c.connect("127.0.0.1", port)
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.loop_start()
        c.subscribe(Topics.chunk(device), qos=1)
        subscribed.wait(30)
        with lock:
            for _ in range(window):
                ask(c)
        while not done.wait(2.0):
            with lock:
                late = [o for o, t in outstanding.items() if time.time() - t > 10]
                for off in late:
                    retries[0] += 1
                    send(c, off)
        tcp[0] += tcp_bytes_received(c.socket())
        c.loop_stop()
        c.disconnect()

    run_session(0)
    if interrupt:
        # resume after the contiguous prefix we hold; chunks in flight are lost
        contiguous = 0
        while contiguous in parts:
            contiguous += chunk
        contiguous = min(contiguous, size)
        for off in [o for o in parts if o >= contiguous]:
            del parts[off]
        state["have"] = contiguous
        state["stop_at"] = size
        run_session(contiguous)
    digest = None
    if check:
        h = hashlib.sha256()
        for off in sorted(parts):
            h.update(parts[off] or b"")
        digest = h.hexdigest()
    return {"tcp": tcp[0], "sha": digest, "retries": retries[0]}


def serve_static(root: str, port: int) -> None:
    """python's ThreadingHTTPServer + SimpleHTTPRequestHandler on the blob dir,
    with a listen backlog that takes 100 simultaneous connects (the default 5
    resets them)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024

        def handle_error(self, request, client_address) -> None:
            pass  # clients that hang up mid-body (the interrupted runs) are expected

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

    Server(("127.0.0.1", port), functools.partial(Quiet, directory=root)).serve_forever()


# -- driving ----------------------------------------------------------------------


def _worker(args):
    kind, port, target, size, interrupt, n_threads, check_first, kw, start_at = args
    fn = http_download if kind != "mqtt" else mqtt_download
    if kind == "mqtt":  # import before the start signal
        import paho.mqtt.client  # noqa: F401

        import edge_agent.protocol  # noqa: F401
    results: list = [None] * n_threads
    errors: list = []
    ends: list[float] = []

    def one(i: int) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            results[i] = fn(port, target, size, interrupt, check_first and i == 0, **kw)
        except Exception as e:  # reported, not hidden
            errors.append(repr(e))
        ends.append(time.time())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors, max(ends)


def run_clients(kind, port, target, size, n, interrupt, procs, kw):
    """N downloads in ``procs`` processes, all released at the same instant;
    wall time = last finish - release."""
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    start_at = time.time() + 2.0 + 0.3 * procs
    jobs = [
        (kind, port, target, size, interrupt, k, i == 0, kw, start_at)
        for i, k in enumerate(per)
        if k
    ]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        outs = pool.map(_worker, jobs)
    wall = max(end for _, _, end in outs) - start_at
    errors = [e for _, errs, _ in outs for e in errs]
    results = [r for rs, _, _ in outs for r in rs]
    return wall, results, errors


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--only", choices=["static", "http", "mqtt"], action="append")
    ap.add_argument("--chunk-kb", type=int, default=256, help="MQTT chunk size")
    ap.add_argument("--window", type=int, default=8, help="MQTT requests in flight per device")
    ap.add_argument("--_serve", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._serve:
        kind, root, port = a._serve
        {"http": serve_http, "mqtt": serve_mqtt, "static": serve_static}[kind](root, int(port))
        return

    work = Path(tempfile.mkdtemp(prefix="cb-serve-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"building + publishing a {a.size_mb:g} MB package ...", flush=True)
        store, v = prepare(work, a.size_mb)
        size = v.size
        sha_bytes = v.sha256  # the artifact's sha256 is the hash of its bytes
        print(
            f"artifact {v.sha256[:12]} {size / 1e6:.1f} MB; {a.clients} concurrent downloaders, "
            f"{a.procs} client processes, cores: {os.cpu_count()}",
            flush=True,
        )
        servers = {}
        # static
        sp = _free_port()
        blob_dir = str(store.blob_path(v.sha256).parent)
        p = subprocess.Popen([sys.executable, __file__, "--_serve", "static", blob_dir, str(sp)])
        procs.append(p)
        _wait_port(sp, p)
        servers["static"] = (p.pid, sp, f"/{v.sha256}")
        # http store
        hp = _free_port()
        p = subprocess.Popen(
            [sys.executable, __file__, "--_serve", "http", str(store.root), str(hp)]
        )
        procs.append(p)
        _wait_port(hp, p)
        servers["http"] = (p.pid, hp, f"/api/v1/store/artifacts/{v.sha256}")
        # mqtt: private broker + chunk service
        mp_port = _free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {mp_port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 10000\nset_tcp_nodelay true\n"
        )
        broker = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(broker)
        _wait_port(mp_port, broker)
        p = subprocess.Popen(
            [sys.executable, __file__, "--_serve", "mqtt", str(store.root), str(mp_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout and p.stdout.readline().strip() == "ready"
        servers["mqtt"] = (broker.pid, mp_port, v.sha256)

        rows = {}
        kw = {"chunk": a.chunk_kb << 10, "window": a.window}
        for kind in a.only or ["static", "http", "mqtt"]:
            _, port, target = servers[kind]
            wall, results, errors = run_clients(
                kind, port, target, size, a.clients, False, a.procs, kw
            )
            shas = {r["sha"] for r in results if r and r["sha"]}
            ok = shas == {sha_bytes}
            tput = a.clients * size / wall / 1e6
            full = sum(r["tcp"] for r in results if r) / a.clients / size
            _, results_i, errors_i = run_clients(
                kind, port, target, size, a.clients, True, a.procs, kw
            )
            resumed = sum(r["tcp"] for r in results_i if r) / a.clients / size
            retries = sum(r.get("retries", 0) for r in results + results_i if r)
            rows[kind] = (tput, resumed)
            print(
                f"{kind:6s}: {tput:8.1f} MB/s aggregate ({wall:.1f} s for {a.clients} x "
                f"{size / 1e6:.1f} MB); received/device: full {full:.3f}x, "
                f"interrupted at {INTERRUPT_AT:.0%} + resumed {resumed:.3f}x; "
                f"sha256 ok {ok}; errors {len(errors) + len(errors_i)}; retried requests {retries}",
                flush=True,
            )
            for e in (errors + errors_i)[:3]:
                print("   error:", e)
        if "static" in rows:
            for kind in ("http", "mqtt"):
                if kind in rows:
                    print(
                        f"{kind}/static throughput ratio {rows[kind][0] / rows['static'][0]:.2f} "
                        f"(target >= 0.7); resumed bytes/device {rows[kind][1]:.3f}x "
                        f"(target <= 1.2x; the static server ignores Range: {rows['static'][1]:.3f}x)"
                    )
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
