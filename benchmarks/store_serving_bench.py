"""Serving a published artifact to many concurrent downloaders over loopback.

Four servers in one run, same artifact, downloaders of the same kind
(raw sockets, one event loop per client process, split over --procs processes):
  static  python's ThreadingHTTPServer + SimpleHTTPRequestHandler on the blob dir
  http    the store router (FastAPI + uvicorn): GET /artifacts/{sha256}, Range/ETag
  mqtt    the store chunk service (``serve-chunks --workers``, default 2 processes
          on a shared subscription) through a private Mosquitto: 1 MiB chunks,
          4 requests in flight per device, re-asked after 10 s unanswered
  ideal   the ceiling for MQTT chunks: a raw-socket chunk server with no
          citybrain code, no paho, no hashing, payloads sent from an mmap
          (sendmsg), through its own private Mosquitto, same downloaders

For each: throughput of N concurrent full downloads; CPU seconds per GB
delivered of every process involved (server, broker, clients: on 2 shared
cores the CPU each path needs decides the ratio); TCP bytes received per
device when every download is interrupted at 40 % and resumed.

    .venv/bin/python benchmarks/store_serving_bench.py                # 100 x 50 MB
    .venv/bin/python benchmarks/store_serving_bench.py --clients 20 --size-mb 10
    .venv/bin/python benchmarks/store_serving_bench.py --only mqtt --mqtt-client paho
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


def serve_mqtt(root: str, port: int, workers: int, max_chunk: int) -> None:
    """The chunk service: in this process (1 worker) or ``workers`` processes
    on the shared subscription, as ``citybrain store serve-chunks --workers``."""
    import signal

    import algorithm_store as st

    url = f"mqtt://127.0.0.1:{port}"
    if workers > 1:
        svc = st.ChunkWorkers(root, url, workers=workers, max_chunk=max_chunk).start()
    else:
        svc = st.ChunkService(st.AlgorithmStore(root), url, max_chunk=max_chunk).start()
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


# -- MQTT clients -----------------------------------------------------------------
#
# The default downloader is a minimal MQTT v5 client on raw sockets, one event
# loop per client process, the counterpart of the raw-socket HTTP client above:
# the benchmark measures the serving side, not paho's per-message Python cost
# (``--mqtt-client paho`` keeps the paho downloader, one thread per device).


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mstr(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _read_varint(mv, pos: int) -> tuple[int, int]:
    n = mult = 0
    while True:
        b = mv[pos]
        n += (b & 0x7F) << mult
        pos += 1
        if not b & 0x80:
            return n, pos
        mult += 7


_PROP_KIND = {0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x23: 2, 0x26: "p"}


def _props(mv) -> tuple[bytes | None, list[tuple[str, str]]]:
    """(correlation data, user properties) of a PUBLISH's properties."""
    corr, user, pos = None, [], 0
    while pos < len(mv):
        pid = mv[pos]
        pos += 1
        kind = _PROP_KIND[pid]
        if kind == "v":
            _, pos = _read_varint(mv, pos)
        elif kind == "s":
            n = int.from_bytes(mv[pos : pos + 2], "big")
            if pid == 0x09:
                corr = bytes(mv[pos + 2 : pos + 2 + n])
            pos += 2 + n
        elif kind == "p":
            k = int.from_bytes(mv[pos : pos + 2], "big")
            key = bytes(mv[pos + 2 : pos + 2 + k]).decode()
            pos += 2 + k
            v = int.from_bytes(mv[pos : pos + 2], "big")
            user.append((key, bytes(mv[pos + 2 : pos + 2 + v]).decode()))
            pos += 2 + v
        else:
            pos += kind
    return corr, user


class _RawDevice:
    """One device: an MQTT v5 session on a raw socket, ``window`` chunk
    requests in flight, packets parsed in place in a reusable buffer."""

    def __init__(self, port, sha, size, chunk, window, interrupt, check) -> None:
        from edge_agent.protocol import ChunkReplyHeader, ChunkRequest, Topics, encode

        self._hdr, self._req, self._encode = ChunkReplyHeader, ChunkRequest, encode
        self.device = f"bench-{uuid.uuid4().hex[:10]}"
        self.topic = Topics.chunk(self.device).encode()
        self.req_topic = Topics.CHUNK_REQUEST.encode()
        self.port, self.sha, self.size, self.chunk, self.window = port, sha, size, chunk, window
        self.check = check
        self.stop_at = int(size * INTERRUPT_AT) if interrupt else size
        self.interrupted = not interrupt
        self.parts: dict[int, bytes | None] = {}
        self.have = self.next = self.tcp = self.retries = 0
        self.outstanding: dict[int, float] = {}
        self.buf = bytearray(2 * chunk + 65536)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0
        self.mid = 0
        self.done = False
        self.out: list[bytes] = []  # PUBACKs and requests, sent together
        self.batching = False

    # -- session ------------------------------------------------------------
    def open(self) -> socket.socket:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.start = self.end = 0
        connect = b"\x00\x04MQTT\x05\x02\x00\x00" + _varint(0) + _mstr(self.device.encode())
        self.sock.sendall(_packet(0x10, connect))
        assert self._blocking_packet()[0] >> 4 == 2  # CONNACK
        sub = self._mid() + _varint(0) + _mstr(self.topic) + b"\x01"
        self.sock.sendall(_packet(0x82, sub))
        assert self._blocking_packet()[0] >> 4 == 9  # SUBACK
        self.outstanding.clear()
        for _ in range(self.window):
            self.ask()
        return self.sock

    def _blocking_packet(self):
        while True:
            for pkt in self._packets():
                return pkt
            self._fill()

    def _mid(self) -> bytes:
        self.mid = self.mid % 65535 + 1
        return self.mid.to_bytes(2, "big")

    def send(self, off: int) -> None:
        self.outstanding[off] = time.time()
        req = self._encode(
            self._req(device=self.device, sha256=self.sha, offset=off, length=self.chunk)
        )
        props = b"\x08" + _mstr(self.topic) + b"\x09" + _mstr(str(off).encode())
        body = _mstr(self.req_topic) + self._mid() + _varint(len(props)) + props + req
        self.out.append(_packet(0x32, body))
        if not self.batching:
            self.flush()

    def flush(self) -> None:
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out.clear()

    def ask(self) -> None:
        if self.next < self.size:
            off, self.next = self.next, self.next + self.chunk
            self.send(off)

    # -- receiving ----------------------------------------------------------
    def _fill(self) -> None:
        if len(self.buf) - self.end < 65536:
            self._compact()
        n = self.sock.recv_into(self.mv[self.end :])
        if not n:
            raise ConnectionError("broker closed the connection")
        self.end += n

    def _compact(self, need: int = 0) -> None:
        """Move the unparsed bytes to the front (a new, larger buffer when a
        packet of ``need`` bytes would not fit)."""
        n = self.end - self.start
        tail = bytes(self.mv[self.start : self.end])
        if need > len(self.buf):
            self.buf = bytearray(need + 65536)
            self.mv = memoryview(self.buf)
        self.buf[:n] = tail
        self.start, self.end = 0, n

    def _packets(self):
        """Complete packets in the buffer: (first byte, body memoryview)."""
        while self.end - self.start >= 2:
            try:
                rem, body = _read_varint(self.mv, self.start + 1)
            except IndexError:
                return
            if body > self.end:
                return  # the length itself is not all here yet
            if body + rem > self.end:
                if body + rem > len(self.buf):
                    self._compact(body - self.start + rem)
                return
            first = self.buf[self.start]
            self.start = body + rem
            yield first, self.mv[body : body + rem]

    def readable(self) -> None:
        self._fill()
        self.batching = True
        acks = self.out
        for first, body in self._packets():
            if first >> 4 != 3:
                continue  # PUBACKs of our requests
            tl = int.from_bytes(body[:2], "big")
            pos = 2 + tl
            if (first >> 1) & 3:
                acks.append(b"\x40\x02" + bytes(body[pos : pos + 2]))
                pos += 2
            plen, pos = _read_varint(body, pos)
            _, user = _props(body[pos : pos + plen])
            payload = body[pos + plen :]
            hdr = self._hdr.from_user_properties(user)
            assert hdr.status == "ok", hdr
            self.outstanding.pop(hdr.offset, None)
            if hdr.offset in self.parts:
                continue  # a duplicate after a retry
            self.parts[hdr.offset] = bytes(payload) if self.check else None
            self.have += hdr.length
            if self.have >= self.stop_at or self.have >= self.size:
                break
            self.ask()
        self.batching = False
        self.flush()

    def finished_session(self) -> bool:
        return self.have >= self.stop_at or self.have >= self.size

    def close(self) -> None:
        self.tcp += tcp_bytes_received(self.sock)
        self.sock.close()

    def resume(self) -> None:
        """Reconnect after the interrupt: keep the contiguous prefix, ask the rest."""
        contiguous = 0
        while contiguous in self.parts:
            contiguous += self.chunk
        contiguous = min(contiguous, self.size)
        for off in [o for o in self.parts if o >= contiguous]:
            del self.parts[off]
        self.have = self.next = contiguous
        self.stop_at = self.size
        self.interrupted = True

    def retry_late(self, now: float) -> None:
        for off in [o for o, t in self.outstanding.items() if now - t > 10]:
            self.retries += 1
            self.send(off)

    def result(self) -> dict:
        digest = None
        if self.check:
            h = hashlib.sha256()
            for off in sorted(self.parts):
                h.update(self.parts[off] or b"")
            digest = h.hexdigest()
        return {"tcp": self.tcp, "sha": digest, "retries": self.retries}


def serve_ideal(root: str, port: int) -> None:
    """The ceiling for MQTT chunks through this broker: a minimal chunk server
    with no citybrain code, no paho, no pydantic and no hashing, one thread on
    a raw socket, replying to each request with one QoS 1 PUBLISH whose payload
    goes from an mmap of the blob to the socket by ``sendmsg`` (no copy in
    user space). The same downloaders and broker as the real service."""
    import json
    import mmap
    import signal

    blobs = {}
    for path in Path(root, "blobs").rglob("*"):
        if path.is_file() and len(path.name) == 64:
            with open(path, "rb") as f:
                blobs[path.name] = memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    conn = _RawDevice(port, "0" * 64, 1, 1 << 20, 0, False, False)
    conn.device = f"ideal-{uuid.uuid4().hex[:6]}"
    conn.topic = b"$share/ideal/" + conn.req_topic
    sock = conn.open()
    sock.settimeout(None)  # idle while the other servers are measured
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    mid = 0
    while True:
        conn._fill()
        acks = []
        for first, body in conn._packets():
            if first >> 4 != 3:
                continue  # PUBACKs of our replies
            tl = int.from_bytes(body[:2], "big")
            pos = 2 + tl
            acks.append(b"\x40\x02" + bytes(body[pos : pos + 2]))
            pos += 2
            plen, pos = _read_varint(body, pos)
            props, resp, corr = body[pos : pos + plen], None, b""
            i = 0
            while i < plen:
                pid, n = props[i], int.from_bytes(props[i + 1 : i + 3], "big")
                if pid == 0x08:
                    resp = bytes(props[i + 3 : i + 3 + n])
                elif pid == 0x09:
                    corr = bytes(props[i + 3 : i + 3 + n])
                i += 3 + n
            req = json.loads(bytes(body[pos + plen :]))
            blob = blobs[req["sha256"]]
            off = req["offset"]
            data = blob[off : off + req["length"]]
            user = (
                ("schema", "citybrain.chunk/1"),
                ("sha256", req["sha256"]),
                ("offset", str(off)),
                ("length", str(len(data))),
                ("total", str(len(blob))),
                ("status", "ok"),
            )
            rprops = (
                b"\x09"
                + _mstr(corr)
                + b"".join(b"\x26" + _mstr(k.encode()) + _mstr(v.encode()) for k, v in user)
            )
            mid = mid % 65535 + 1
            var = _mstr(resp) + mid.to_bytes(2, "big") + _varint(len(rprops)) + rprops
            head = bytes([0x32]) + _varint(len(var) + len(data)) + var
            sent = sock.sendmsg([head, data])
            total = len(head) + len(data)
            while sent < total:  # rare: the rest, still without copying the payload
                rest = [head[sent:], data] if sent < len(head) else [data[sent - len(head) :]]
                sent += sock.sendmsg(rest)
        if acks:
            sock.sendall(b"".join(acks))


def mqtt_raw_many(port, sha, size, interrupt, n, check_first, chunk, window) -> list[dict]:
    """``n`` raw-socket devices in one event loop; returns their results."""
    import selectors

    sel = selectors.DefaultSelector()
    devs = [
        _RawDevice(port, sha, size, chunk, window, interrupt, check_first and i == 0)
        for i in range(n)
    ]
    for d in devs:
        sel.register(d.open(), selectors.EVENT_READ, d)
    active = n
    last_retry = time.time()
    while active:
        for key, _ in sel.select(2.0):
            d = key.data
            d.readable()
            if d.finished_session():
                sel.unregister(d.sock)
                d.close()
                if not d.interrupted:
                    d.resume()
                    sel.register(d.open(), selectors.EVENT_READ, d)
                else:
                    active -= 1
        now = time.time()
        if now - last_retry > 2.0:
            last_retry = now
            for d in devs:
                if not d.finished_session() and d.sock.fileno() >= 0:
                    d.retry_late(now)
    return [d.result() for d in devs]


def mqtt_download(
    port: int,
    sha: str,
    size: int,
    interrupt: bool,
    check: bool,
    chunk: int,
    window: int,
) -> dict:
    """A paho device fetching the artifact by chunks, ``window`` requests in
    flight; a request unanswered for 10 s is asked again."""
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


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            stats[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in tree if p in stats)


def _worker(args):
    kind, port, target, size, interrupt, n_threads, check_first, kw, start_at = args
    import resource

    if kind == "mqtt":  # import before the start signal
        import paho.mqtt.client  # noqa: F401

        import edge_agent.protocol  # noqa: F401
    kw = dict(kw)
    client = kw.pop("client", "raw")
    time.sleep(max(0.0, start_at - time.time()))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    errors: list = []
    if kind == "mqtt" and client == "raw":
        try:
            results = mqtt_raw_many(port, target, size, interrupt, n_threads, check_first, **kw)
        except Exception as e:  # reported, not hidden
            results, errors = [], [repr(e)]
        ends = [time.time()]
    else:
        fn = http_download if kind != "mqtt" else mqtt_download
        if kind != "mqtt":
            kw = {}
        results = [None] * n_threads
        ends = []

        def one(i: int) -> None:
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
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return results, errors, max(ends), cpu


def run_clients(kind, port, target, size, n, interrupt, procs, kw, server_pids):
    """N downloads in ``procs`` processes, all released at the same instant;
    wall time = last finish - release. CPU seconds of the server processes
    (by name) and of the clients during the run."""
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    start_at = time.time() + 2.0 + 0.3 * procs
    jobs = [
        (kind, port, target, size, interrupt, k, i == 0, kw, start_at)
        for i, k in enumerate(per)
        if k
    ]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        pending = pool.map_async(_worker, jobs)
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = {name: tree_cpu(pid) for name, pid in server_pids.items()}
        outs = pending.get()
    cpu = {name: tree_cpu(pid) - cpu0[name] for name, pid in server_pids.items()}
    cpu["clients"] = sum(o[3] for o in outs)
    wall = max(end for _, _, end, _ in outs) - start_at
    errors = [e for _, errs, _, _ in outs for e in errs]
    results = [r for rs, _, _, _ in outs for r in rs]
    return wall, results, errors, cpu


def _cpu_text(cpu: dict, gb: float, wall: float) -> str:
    """CPU seconds per GB of each part, and how busy each server part was
    (cores: CPU seconds / wall seconds; a single-threaded part caps at 1)."""
    total = sum(cpu.values())
    parts = ", ".join(f"{k} {v / gb:.2f}" for k, v in cpu.items())
    busy = ", ".join(f"{k} {v / wall:.2f}" for k, v in cpu.items() if k != "clients")
    return f"CPU s/GB: {parts} (total {total / gb:.2f}); busy cores: {busy}"


def plot(rows: dict, path: str, title: str) -> None:
    """Throughput per server, and the CPU seconds per GB each part needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(kinds, [rows[k][0] for k in kinds], color="#4c72b0")
    if "static" in rows:
        ax1.axhline(0.7 * rows["static"][0], color="#c44e52", ls="--", label="0.7 x static")
        ax1.legend()
    ax1.set_ylabel("MB/s delivered (all downloaders)")
    ax1.set_title(f"throughput ({title})")
    gb_parts = sorted({p for k in kinds for p in rows[k][2]})
    bottom = [0.0] * len(kinds)
    for part in gb_parts:
        vals = [rows[k][2].get(part, 0.0) / rows[k][3] for k in kinds]
        ax2.bar(kinds, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_ylabel("CPU seconds per GB delivered")
    ax2.set_title("where the CPU goes")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--only", choices=["static", "http", "mqtt", "ideal"], action="append")
    ap.add_argument("--chunk-kb", type=int, default=1024, help="MQTT chunk size (KiB)")
    ap.add_argument("--window", type=int, default=4, help="MQTT requests in flight per device")
    ap.add_argument("--workers", type=int, default=2, help="chunk-service processes")
    ap.add_argument("--mqtt-client", choices=["raw", "paho"], default="raw")
    ap.add_argument("--no-resume", action="store_true", help="skip the interrupted runs")
    ap.add_argument(
        "--broker-nice",
        type=int,
        default=0,
        help="diagnostic: run the brokers at this nice value (-5: more CPU share under load)",
    )
    ap.add_argument("--plot", help="write a PNG of throughput and CPU per GB here")
    ap.add_argument("--_serve", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._serve:
        kind, root, port, *rest = a._serve
        if kind == "mqtt":
            serve_mqtt(root, int(port), int(rest[0]), int(rest[1]))
        elif kind == "ideal":
            serve_ideal(root, int(port))
        else:
            {"http": serve_http, "static": serve_static}[kind](root, int(port))
        return

    chunk = a.chunk_kb << 10
    kinds = a.only or ["static", "http", "mqtt", "ideal"]
    work = Path(tempfile.mkdtemp(prefix="cb-serve-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"building + publishing a {a.size_mb:g} MB package ...", flush=True)
        store, v = prepare(work, a.size_mb)
        size = v.size
        sha_bytes = v.sha256  # the artifact's sha256 is the hash of its bytes
        print(
            f"artifact {v.sha256[:12]} {size / 1e6:.1f} MB; {a.clients} concurrent downloaders "
            f"in {a.procs} client processes; MQTT: {a.chunk_kb} KiB chunks, {a.window} in "
            f"flight, {a.workers} service worker(s), {a.mqtt_client} clients; "
            f"cores: {os.cpu_count()}; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        servers = {}
        if "static" in kinds:
            sp = _free_port()
            blob_dir = str(store.blob_path(v.sha256).parent)
            p = subprocess.Popen(
                [sys.executable, __file__, "--_serve", "static", blob_dir, str(sp)]
            )
            procs.append(p)
            _wait_port(sp, p)
            servers["static"] = ({"server": p.pid}, sp, f"/{v.sha256}")
        if "http" in kinds:
            hp = _free_port()
            p = subprocess.Popen(
                [sys.executable, __file__, "--_serve", "http", str(store.root), str(hp)]
            )
            procs.append(p)
            _wait_port(hp, p)
            servers["http"] = ({"server": p.pid}, hp, f"/api/v1/store/artifacts/{v.sha256}")

        def broker() -> tuple[subprocess.Popen, int]:
            port = _free_port()
            conf = work / f"mosquitto-{port}.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                "max_inflight_messages 100\nmax_queued_messages 10000\nset_tcp_nodelay true\n"
            )
            b = subprocess.Popen(
                ["nice", "-n", str(a.broker_nice)] * bool(a.broker_nice)
                + [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(b)
            _wait_port(port, b)
            return b, port

        # MQTT: the store's chunk service and the ideal one, each on a private broker
        for kind in {"mqtt", "ideal"} & set(kinds):
            b, port = broker()
            cmd = [sys.executable, __file__, "--_serve", kind, str(store.root), str(port)]
            if kind == "mqtt":
                cmd += [str(a.workers), str(chunk)]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout and p.stdout.readline().strip() == "ready"
            servers[kind] = ({"service": p.pid, "broker": b.pid}, port, v.sha256)

        rows = {}
        kw = {"chunk": chunk, "window": a.window, "client": a.mqtt_client}
        gb = a.clients * size / 1e9
        for kind in kinds:
            pids, port, target = servers[kind]
            client_kind = "mqtt" if kind == "ideal" else kind
            wall, results, errors, cpu = run_clients(
                client_kind, port, target, size, a.clients, False, a.procs, kw, pids
            )
            shas = {r["sha"] for r in results if r and r["sha"]}
            ok = shas == {sha_bytes}
            tput = gb * 1e3 / wall
            full = sum(r["tcp"] for r in results if r) / a.clients / size
            resumed, results_i, errors_i = float("nan"), [], []
            if not a.no_resume:
                _, results_i, errors_i, _ = run_clients(
                    client_kind, port, target, size, a.clients, True, a.procs, kw, pids
                )
                resumed = sum(r["tcp"] for r in results_i if r) / a.clients / size
            retries = sum(r.get("retries", 0) for r in results + results_i if r)
            rows[kind] = (tput, resumed, cpu, gb)
            print(
                f"{kind:6s}: {tput:8.1f} MB/s aggregate ({wall:.1f} s for {a.clients} x "
                f"{size / 1e6:.1f} MB); received/device: full {full:.3f}x, "
                f"interrupted at {INTERRUPT_AT:.0%} + resumed {resumed:.3f}x; "
                f"sha256 ok {ok}; errors {len(errors) + len(errors_i)}; retried requests "
                f"{retries}; {_cpu_text(cpu, gb, wall)}; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            for e in (errors + errors_i)[:3]:
                print("   error:", e)
        if "static" in rows:
            base = rows["static"]
            for kind in ("http", "mqtt"):
                if kind in rows:
                    tput, resumed, cpu, _ = rows[kind]
                    print(
                        f"{kind}/static throughput ratio {tput / base[0]:.2f} (target >= 0.7); "
                        f"needs {sum(cpu.values()) / sum(base[2].values()):.2f}x static's CPU "
                        "per GB; "
                        f"resumed bytes/device {resumed:.3f}x (target <= 1.2x; the static "
                        f"server ignores Range: {base[1]:.3f}x)"
                    )
            if "ideal" in rows:
                print(f"ideal/static throughput ratio {rows['ideal'][0] / base[0]:.2f}")
        if "ideal" in rows and "mqtt" in rows:
            print(
                f"mqtt/ideal throughput ratio {rows['mqtt'][0] / rows['ideal'][0]:.2f} "
                "(the store's chunk service against an ideal raw one, same broker + clients)"
            )
        if a.plot and rows:
            plot(rows, a.plot, f"{a.clients} x {size / 1e6:.0f} MB, load {os.getloadavg()[0]:.0f}")
            print(f"plot: {a.plot}")
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
