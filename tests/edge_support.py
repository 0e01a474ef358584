"""Helpers for the edge agent tests: tiny ONNX models, signed packages built
with ``edge_agent.protocol`` only, a real MQTT chunk service with fault
injection, a Range-capable HTTP artifact server, a private Mosquitto."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import (
    MANIFEST_NAME,
    ArtifactRef,
    Assignment,
    ChunkReplyHeader,
    ChunkRequest,
    DesiredState,
    EventRule,
    FileEntry,
    Golden,
    InputSpec,
    Manifest,
    Postprocess,
    Preprocess,
    Signature,
    Topics,
    decode,
    key_id,
    sha256_file,
    write_package_archive,
)
from tests.conftest import SHARED_DATA, free_port, port_answers

VIDEO = SHARED_DATA / "vtest.avi"
SIDE = 16


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# ---------------------------------------------------------------------------
# Models and packages
# ---------------------------------------------------------------------------


def classifier_onnx(
    path: Path, *, n_classes: int = 3, bias: float = 0.0, embed: bool = True
) -> None:
    """input [1,3,16,16] -> mean over H,W -> x W + b -> logits [1,C] (+ embedding [1,3])."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, n_classes)).astype(np.float32)
    b = (np.arange(n_classes, dtype=np.float32) * bias).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_classes])]
    if embed:
        nodes.append(helper.make_node("Identity", ["pooled"], ["embedding"]))
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        outputs,
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [n_classes], b.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def convnet_onnx(path: Path, *, side: int = 224, n_classes: int = 10, width: int = 16) -> None:
    """A small random CNN (3 strided convs + global pool + linear) for benchmarks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits, nodes, prev, cin = [], [], "input", 3
    for i, cout in enumerate((width, width * 2, width * 4, width * 8)):
        w = (rng.normal(size=(cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", cout
    fc = (rng.normal(size=(cin, n_classes)) * 0.1).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def detector_onnx(path: Path, boxes: list[list[float]]) -> None:
    """Emits the given rows (x1,y1,x2,y2,score,class) for any input: [1,K,6]."""
    import onnx
    from onnx import TensorProto, helper

    arr = np.asarray(boxes, dtype=np.float32)[None]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["C", "z"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(arr.shape))],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("C", TensorProto.FLOAT, list(arr.shape), arr.flatten().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


class Keys:
    def __init__(self, root: Path) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.path = root / f"store-{key_id(self.raw)}.pub"
        self.path.write_bytes(self.raw)

    def sign(self, m: Manifest) -> Manifest:
        sig = base64.b64encode(self.private.sign(m.signing_bytes())).decode()
        return m.model_copy(update={"signature": Signature(key_id=key_id(self.raw), value=sig)})


def build_package(
    root: Path,
    keys: Keys,
    *,
    algorithm: str = "tiny-cls",
    version: str = "1.0.0",
    bias: float = 0.0,
    task: str = "classify",
    boxes: list[list[float]] | None = None,
    labels: list[str] | None = None,
    event_rules: list[EventRule] | None = None,
    score_threshold: float = 0.0,
    golden_shift: float = 0.0,
    sign_with: Keys | None = None,
    extra_file: bool = False,
    centroids: np.ndarray | None = None,
    onnx_file: Path | None = None,
    side: int = SIDE,
) -> tuple[Path, ArtifactRef, Manifest]:
    """A signed package archive; ``golden_shift`` breaks the golden output,
    ``sign_with`` signs with another key, ``extra_file`` adds an unlisted file."""
    import onnxruntime as ort

    pkg = Path(tempfile.mkdtemp(dir=root, prefix=f"{algorithm}-{version}-"))
    labels = labels or ["car", "person", "bike"]
    if onnx_file is not None:
        shutil.copy(onnx_file, pkg / "model.onnx")
        post = Postprocess(output="logits", score_threshold=score_threshold)
    elif task == "classify":
        classifier_onnx(pkg / "model.onnx", n_classes=len(labels), bias=bias)
        post = Postprocess(output="logits", score_threshold=score_threshold)
    else:
        detector_onnx(pkg / "model.onnx", boxes or [[0.1, 0.1, 0.3, 0.3, 0.9, 0]])
        post = Postprocess(output="boxes", score_threshold=score_threshold or 0.5, nms_iou=0.5)
    (pkg / "golden").mkdir()
    x = np.random.default_rng(1).random((1, 3, side, side), dtype=np.float32)
    sess = ort.InferenceSession(str(pkg / "model.onnx"))
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.save(pkg / "golden/input.npy", x)
    np.save(pkg / "golden/output.npy", y + np.float32(golden_shift))
    if centroids is not None:
        np.save(pkg / "summary.npy", centroids.astype(np.float32))
    files = {
        p.relative_to(pkg).as_posix(): FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
        for p in sorted(pkg.rglob("*"))
        if p.is_file()
    }
    manifest = Manifest(
        id=algorithm,
        version=version,
        task=task,
        labels=labels,
        input=InputSpec(
            name="input",
            shape=[1, 3, side, side],
            preprocess=Preprocess(resize=(side, side), color="RGB"),
        ),
        postprocess=post,
        event_rules=event_rules or [],
        golden=Golden(atol=1e-4, rtol=1e-4),
        embedding_summary="summary.npy" if centroids is not None else None,
        files=files,
    )
    manifest = (sign_with or keys).sign(manifest)
    (pkg / MANIFEST_NAME).write_text(manifest.model_dump_json(by_alias=True))
    if extra_file:
        (pkg / "surprise.sh").write_text("echo pwned\n")
    archive = root / f"{algorithm}-{version}-{os.urandom(3).hex()}.cbpkg"
    write_package_archive(pkg, archive)
    shutil.rmtree(pkg)
    sig = manifest.signature.value if manifest.signature else "unsigned"
    ref = ArtifactRef(sha256=sha256_file(archive), size=archive.stat().st_size, signature=sig)
    return archive, ref, manifest


def desired(
    device: str, revision: int, items: list[tuple[str, str, str, ArtifactRef]], **kw: Any
) -> DesiredState:
    """items: (stream, algorithm, version, ref); source defaults to vtest.avi."""
    source = kw.pop("source", str(VIDEO))
    fps = kw.pop("fps", 20.0)
    params = kw.pop("params", {})
    return DesiredState(
        device=device,
        revision=revision,
        assignments=[
            Assignment(
                stream=s, source=source, algorithm=a, version=v, artifact=r, fps=fps, params=params
            )
            for s, a, v, r in items
        ],
    )


# ---------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------


def client(
    port: int, *, client_id: str = "", username: str | None = None, password: str | None = None
) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    if username:
        c.username_pw_set(username, password)
    connected = threading.Event()
    c.on_connect = lambda cl, ud, fl, rc, pr: connected.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert connected.wait(10), "test client could not connect"
    return c


def publish_retained(port: int, topic: str, payload: bytes, **auth: str) -> None:
    c = client(port, **auth)
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


class Watcher:
    """Collects decoded messages of one topic."""

    def __init__(self, port: int, topic: str, model: Any = None) -> None:
        self.messages: list[Any] = []
        self.raw: list[bytes] = []
        self.model = model
        self.c = client(port)
        self.c.on_message = self._on
        sub = threading.Event()
        self.c.on_subscribe = lambda *a: sub.set()
        self.c.subscribe(topic, qos=1)
        sub.wait(5)

    def _on(self, c: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
        self.raw.append(msg.payload)
        if self.model is not None and msg.payload:
            self.messages.append(decode(msg.payload, self.model))

    def last(self) -> Any:
        return self.messages[-1] if self.messages else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class ChunkServer:
    """A real chunk service on the broker, implementing the wire contract, with
    fault injection: ``corrupt`` offsets get a flipped byte (the header keeps the
    true chunk hash), ``gate`` (an Event) blocks replies while cleared."""

    def __init__(
        self,
        port: int,
        chunk_delay: float = 0.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.artifacts: dict[str, bytes] = {}
        self.corrupt: dict[str, set[int] | str] = {}
        self.requests: dict[str, list[int]] = defaultdict(list)
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.gate = threading.Event()
        self.gate.set()
        self.delay = chunk_delay
        self.budget: int | None = None  # replies left before the gate closes by itself
        self.c = client(
            port, client_id=f"chunksrv-{os.urandom(3).hex()}", username=username, password=password
        )
        self.c.on_message = self._on
        sub = threading.Event()
        self.c.on_subscribe = lambda *a: sub.set()
        self.c.subscribe(Topics.CHUNK_REQUEST, qos=1)
        assert sub.wait(5)
        self._q: list[tuple[Any, Any]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def add(self, archive: Path | bytes, sha: str | None = None) -> str:
        data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
        sha = sha or hashlib.sha256(data).hexdigest()
        self.artifacts[sha] = data
        return sha

    def _on(self, c: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            self._q.append((msg.payload, msg.properties))
            self._cv.notify()

    def _serve(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._q or self._stop)
                if self._stop:
                    return
                payload, props = self._q.pop(0)
            if self.budget is not None:
                if self.budget <= 0:
                    self.gate.clear()
                self.budget -= 1
            self.gate.wait()
            if self.delay:
                time.sleep(self.delay)
            req = decode(payload, ChunkRequest)
            self.requests[req.device].append(req.offset)
            data = self.artifacts.get(req.sha256)
            out = Properties(PacketTypes.PUBLISH)
            out.CorrelationData = props.CorrelationData
            if data is None:
                h = ChunkReplyHeader(
                    sha256=req.sha256,
                    offset=req.offset,
                    length=0,
                    total=0,
                    status="not_found",
                    error="unknown artifact",
                )
                body = b""
            else:
                body = data[req.offset : req.offset + req.length]
                h = ChunkReplyHeader(
                    sha256=req.sha256,
                    offset=req.offset,
                    length=len(body),
                    total=len(data),
                    chunk_sha256=hashlib.sha256(body).hexdigest(),
                )
                bad = self.corrupt.get(req.sha256)
                if bad == "all" or (isinstance(bad, set) and req.offset in bad):
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
            out.UserProperty = h.to_user_properties()
            self.bytes_sent[req.device] += len(body)
            self.c.publish(props.ResponseTopic, body, qos=1, properties=out)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self.gate.set()
        self.c.disconnect()
        self.c.loop_stop()


class Mosquitto:
    """A private mosquitto on a free port (killable, restartable)."""

    def __init__(self, root: Path, *, extra: str = "", persistence: bool = True) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "password_file" not in extra else "",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {root}/",
            "log_type error",
            extra,
        ]
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for(lambda: port_answers(self.port), 10)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ArtifactHttpServer:
    """``GET /api/v1/store/artifacts/{sha}`` with Range, If-Range, ETag; ``cut_after``
    closes the first response after that many bytes (a dropped connection)."""

    def __init__(self) -> None:
        self.artifacts: dict[str, bytes] = {}
        self.cut_after: int | None = None
        self.ranges: list[str | None] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                sha = self.path.rsplit("/", 1)[-1]
                data = outer.artifacts.get(sha)
                if data is None:
                    self.send_error(404)
                    return
                etag = f'"{sha}"'
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                if rng and self.headers.get("If-Range", etag) == etag:
                    start = int(rng.split("=")[1].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if outer.cut_after is not None:
                    n, outer.cut_after = outer.cut_after, None
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def agent_config_file(path: Path, **cfg: Any) -> Path:
    path.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in cfg.items()}))
    return path
