"""Ray Serve vs a bare ONNX Runtime loop on the same model and machine.

Builds the classifier architecture the flywheel exports (``--model flywheel``:
conv_encoder(256) + linear head at 64x64, random weights, as ONNX) or a lighter
CNN, signs and publishes it to a temporary algorithm store, then measures, in
alternating rounds on the same warm machine (best round per side):

* bare: ``cloud.serving.Predictor.predict`` on batches of ``--batch`` images in
  one Python loop (preprocessing + ORT + softmax, no Ray);
* per-image: the same package deployed with ``cloud.serving.deploy_version``
  (one replica, ``@serve.batch(max_batch_size=--batch)``), ``--concurrency``
  client threads sending one image per request through the handle;
* chunked-K: the same deployment, requests of K images (``predict(...,
  chunk=K)``), ``--concurrency / K`` client threads.

Prints throughput (images/s), the serve/bare ratio (target >= 0.8 at batch >= 8),
per-request latency p50/p99 (bare: the batch that carried the image) and the
batch sizes @serve.batch formed.

    .venv/bin/python benchmarks/serving_bench.py [--images 512 --batch 8 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cnn_onnx(path: Path, size: int, model: str, classes: int = 4, seed: int = 0) -> Path:
    """``flywheel``: the architecture the flywheel trains and exports
    (``cloud.flywheel._backbones.conv_encoder(256)`` + linear head: 4 x [conv3x3,
    BN (folded), ReLU, maxpool], GAP, linear), with random weights.
    ``light``: 3 strided convs 16/32/64 (about 10x cheaper)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev, cin = [], [], "input", 3
    chans, stride, pool = (
        ((32, 64, 128, 256), 1, True) if model == "flywheel" else ((16, 32, 64), 2, False)
    )
    for i, cout in enumerate(chans):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [prev, f"w{i}", f"b{i}"],
                [f"c{i}"],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", cout
        if pool and i < len(chans) - 1:
            nodes.append(
                helper.make_node("MaxPool", [prev], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            prev = f"p{i}"
    wf = (rng.standard_normal((classes, cin)) * 0.1).astype(np.float32)
    inits += [
        numpy_helper.from_array(wf, "wf"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "bf"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(path))
    return path


def drive(
    handle: object, images: list[np.ndarray], chunk: int, concurrency: int
) -> tuple[float, list[float]]:
    """``concurrency`` client threads send requests of ``chunk`` images until all
    images are served; (images/s, per-request latencies)."""
    work = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    lat: list[float] = []
    lock = threading.Lock()
    nxt = iter(range(len(work)))

    def client() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            req = work[i][0] if chunk == 1 else work[i]
            s = time.perf_counter()
            handle.remote(req).result()  # type: ignore[attr-defined]
            d = time.perf_counter() - s
            with lock:
                lat.append(d)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(images) / (time.perf_counter() - t0), lat


def drive_async(
    handle: Any, images: list[np.ndarray], chunk: int, concurrency: int
) -> tuple[float, list[float]]:
    """Like :func:`drive` with ``concurrency`` asyncio tasks on one event loop
    (lighter on the driver than threads)."""
    import asyncio

    work = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    lat: list[float] = []

    async def run() -> float:
        nxt = iter(range(len(work)))

        async def client() -> None:
            for i in nxt:
                req = work[i][0] if chunk == 1 else work[i]
                s = time.perf_counter()
                await handle.remote(req)
                lat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - t0

    return len(images) / asyncio.run(run()), lat


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1024, help="images per measured run")
    ap.add_argument("--batch", type=int, default=8, help="bare batch = serve max_batch_size")
    ap.add_argument("--model", choices=["flywheel", "light"], default="flywheel")
    ap.add_argument("--size", type=int, default=64, help="model input side (flywheel: 64)")
    ap.add_argument("--frame", default="240x320", help="HxW of the uint8 BGR input frames")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (both sides)")
    ap.add_argument("--concurrency", type=int, default=32, help="client threads (serve)")
    ap.add_argument(
        "--chunks", default="4,8", help="images per request of the chunked modes (<= --batch)"
    )
    ap.add_argument("--client", choices=["asyncio", "threads"], default="asyncio")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="serve batch_wait_timeout_s")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; best per side")
    a = ap.parse_args()

    import ray

    import algorithm_store as st
    from cloud.flywheel._export import preprocess_contract
    from cloud.serving import Predictor, ServingConfig, deploy_version

    fh, fw = (int(v) for v in a.frame.split("x"))
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8) for _ in range(64)]
    images = [pool[i % len(pool)] for i in range(a.images)]

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        t = Path(tmp)
        key = st.load_private_key(st.keygen(t / "keys"))
        store = st.AlgorithmStore(t / "store", private_key=key)
        built = st.build_package(
            cnn_onnx(t / "cnn.onnx", a.size, a.model),
            id="bench-cnn",
            version="1.0.0",
            task="classify",
            labels=["car", "person", "bike", "bus"],
            private_key=key,
            out_dir=t / "out",
            input={
                "name": "input",
                "dtype": "float32",
                "shape": ["N", 3, a.size, a.size],
                "preprocess": preprocess_contract(a.size),
            },
            postprocess={"output": "logits"},
            profile=False,
        )
        store.publish(built.archive, channel="stable")

        # Both sides are measured in alternating rounds on the same warm
        # machine, so background load hits them alike; best round per side.
        pred = Predictor.from_store(store, "bench-cnn", "1.0.0", intra_op_threads=a.threads)
        pred.predict(images[: a.batch])  # warm

        def bare_round() -> tuple[float, list[float]]:
            lat: list[float] = []
            t0 = time.perf_counter()
            for i in range(0, len(images), a.batch):
                chunk = images[i : i + a.batch]
                s = time.perf_counter()
                pred.predict(chunk)
                lat += [time.perf_counter() - s] * len(chunk)
            return len(images) / (time.perf_counter() - t0), lat

        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        try:
            cfg = ServingConfig(
                max_batch_size=a.batch,
                batch_wait_timeout_s=a.wait_ms / 1000,
                min_replicas=1,
                max_replicas=1,
                num_cpus=1,
                intra_op_threads=a.threads,
                max_ongoing_requests=max(a.batch, a.concurrency) * 2,
            )
            handle = deploy_version(store, "bench-cnn", "1.0.0", cfg)
            for r in [handle.remote(im) for im in images[: 4 * a.batch]]:  # warm
                r.result()
            client_fn = drive_async if a.client == "asyncio" else drive
            modes: dict[str, tuple[int, int, Any]] = {
                "bare": (a.batch, 1, bare_round),
                "per-image": (
                    1,
                    a.concurrency,
                    lambda: client_fn(handle, images, 1, a.concurrency),
                ),
            }
            for ch in (int(x) for x in a.chunks.split(",") if x):
                conc = max(2, a.concurrency // ch)
                modes[f"chunked-{ch}"] = (
                    ch,
                    conc,
                    lambda ch=ch, conc=conc: client_fn(handle, images, ch, conc),
                )
            results: dict[str, tuple[int, int, float, list[float]]] = {}
            rounds: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(a.repeats):
                for mode, (_chunk, _conc, fn) in modes.items():
                    tput, lat = fn()
                    rounds[mode].append(tput)
                    if mode not in results or tput > results[mode][2]:
                        results[mode] = (modes[mode][0], modes[mode][1], tput, lat)
            info = handle.info.remote().result()
            sizes, busy_s = info["batch_sizes"], info["busy_s"]
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()

    images_served = sum(int(k) * v for k, v in sizes.items())
    mean_batch = images_served / max(1, sum(sizes.values()))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    )
    print(
        f"model: {a.model} CNN 3x{a.size}x{a.size} -> 4 classes; frames {fh}x{fw} uint8 BGR; "
        f"images/run {a.images}; ORT threads {a.threads}; best of {a.repeats}"
    )
    bare = results.pop("bare")
    bare_best, bare_lat = bare[2], bare[3]
    print(
        f"bare ORT loop   batch {a.batch:3d}: {bare_best:8.1f} img/s  "
        f"p50 {pct(bare_lat, 50):7.2f} ms  p99 {pct(bare_lat, 99):7.2f} ms  "
        f"(latency = the batch carrying the image)"
    )
    for mode, (chunk, conc, tput, lat) in results.items():
        print(
            f"Ray Serve  max_batch {a.batch:3d}: {tput:8.1f} img/s  "
            f"p50 {pct(lat, 50):7.2f} ms  p99 {pct(lat, 99):7.2f} ms  "
            f"({mode}: {chunk} img/request, {conc} in flight)  ratio {tput / bare_best:.2f}x"
        )
    print(
        "img/s per round: " + ", ".join(f"{m} {[round(x) for x in v]}" for m, v in rounds.items())
    )
    print(f"batches formed by @serve.batch (images per model call -> calls): {sizes}")
    print(f"mean images per model call: {mean_batch:.1f}")
    bare_ms = 1000 / bare_best
    print(
        f"model time per image inside the replica: {1000 * busy_s / images_served:.2f} ms "
        f"(bare loop, best round: {bare_ms:.2f} ms): a slower replica means its model "
        "calls compete for the cores with the load generator and Ray's own processes"
    )
    ratio = max(v[2] for v in results.values()) / bare_best
    verdict = "OK" if ratio >= 0.8 else "BELOW TARGET"
    print(f"best serve / bare throughput: {ratio:.2f}x (target >= 0.80x) -> {verdict}")


if __name__ == "__main__":
    main()
