"""Edge agent inference overhead: frames/s of a real agent (MQTT desired state,
signed package over chunks, reader thread + 1-slot buffer, postprocess, events,
hard-sample selectors) on vtest.avi vs a bare ONNX Runtime loop (read, preprocess,
run) on the same model. Target: agent >= 0.9x bare.

    .venv/bin/python benchmarks/edge_inference_bench.py [--seconds 10] [--side 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent import Agent, load_config  # noqa: E402
from edge_agent._runtime import preprocess  # noqa: E402
from edge_agent.protocol import Topics, encode  # noqa: E402
from tests.edge_support import (  # noqa: E402
    VIDEO,
    ChunkServer,
    Keys,
    build_package,
    convnet_onnx,
    desired,
    publish_retained,
    wait_for,
)


def bare_loop(model_path: Path, manifest, seconds: float, predecoded: list | None = None) -> float:  # type: ignore[no-untyped-def]
    """Read (or take a pre-decoded frame), preprocess, run: one thread, no agent."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cap = cv2.VideoCapture(str(VIDEO))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if predecoded:
            frame = predecoded[n % len(predecoded)]
        else:
            ok, frame = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
        x = preprocess(frame, manifest.input)
        logits = sess.run(None, {name: x})[0]
        _ = np.exp(logits - logits.max())
        n += 1
    cap.release()
    return n / (time.perf_counter() - t0)


def agent_run(root: Path, keys: Keys, ref, port: int, seconds: float) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    dev = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        None,
        device_id=dev,
        broker_url=f"mqtt://127.0.0.1:{port}",
        data_dir=root / dev,
        store_public_key=keys.path,
    )
    agent = Agent(cfg).start()
    try:
        publish_retained(
            port,
            Topics.desired(dev),
            encode(desired(dev, 1, [("cam1", "bench", "1.0.0", ref)], fps=120)),
        )
        wait_for(lambda: "cam1" in agent.streams and agent.streams["cam1"].frames > 3, 60)
        w = agent.streams["cam1"]
        f0, d0, t0 = w.frames, w.dropped, time.perf_counter()
        time.sleep(seconds)
        fps = (w.frames - f0) / (time.perf_counter() - t0)
        return fps, w.dropped - d0
    finally:
        agent.stop()
        for t in (Topics.desired(dev), Topics.reported(dev), Topics.status(dev)):
            publish_retained(port, t, b"")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    keys = Keys(root)
    onnx_path = root / "convnet.onnx"
    convnet_onnx(onnx_path, side=args.side)
    archive, ref, manifest = build_package(
        root,
        keys,
        algorithm="bench",
        onnx_file=onnx_path,
        side=args.side,
        labels=[f"c{i}" for i in range(10)],
    )
    srv = ChunkServer(args.port)
    srv.add(archive)
    cap = cv2.VideoCapture(str(VIDEO))
    frames = [cap.read()[1] for _ in range(50)]
    cap.release()
    bare, pre, agent = [], [], []
    try:
        for _ in range(args.rounds):
            bare.append(bare_loop(onnx_path, manifest, args.seconds))
            pre.append(bare_loop(onnx_path, manifest, args.seconds, predecoded=frames))
            fps, dropped = agent_run(root, keys, ref, args.port, args.seconds)
            agent.append(fps)
            print(
                f"round: bare {bare[-1]:.1f} fps, bare pre-decoded {pre[-1]:.1f} fps, "
                f"agent {fps:.1f} fps (dropped {dropped})"
            )
    finally:
        srv.close()
    b, p, a = (float(np.median(v)) for v in (bare, pre, agent))
    print(f"model: {args.side}x{args.side} CNN, archive {ref.size} bytes, video {VIDEO.name}")
    print(f"bare ORT loop (decode+preprocess+run, 1 thread): {b:.1f} frames/s")
    print(f"bare ORT on pre-decoded frames (preprocess+run): {p:.1f} frames/s")
    print(f"edge agent (decode in its reader thread)       : {a:.1f} frames/s")
    print(f"ratio agent/bare loop: {a / b:.3f} (target >= 0.9); agent/pre-decoded: {a / p:.3f}")


if __name__ == "__main__":
    main()
