"""Ray Serve vs a bare ONNX Runtime loop on the same model and machine.

Builds the classifier architecture the flywheel exports (``--model flywheel``:
conv_encoder(256) + linear head at 64x64, random weights, as ONNX) or a lighter
CNN, signs and publishes it to a temporary algorithm store, deploys it with
``cloud.serving.deploy_version`` (one replica, ``@serve.batch``) and measures,
in alternating rounds on the same machine (background load hits every mode
alike; figures are medians, ratios are medians of paired rounds):

* bare: ``Predictor.predict`` on batches of ``--batch`` frames in one loop;
* frames: ``--batch`` full frames per request through the object store (how
  requests travelled before);
* resized: the requests ``cloud.serving.predict`` sends: frames resized to the
  model input by the caller, stacked into one uint8 array, sent by value;
* per-image: the same, one frame per request (camera scene inference).

Each mode also reports CPU ms per image summed over every process involved
(client, replica, raylet, GCS, controller, ...), read from /proc: it shows where
the overhead is and, unlike wall time, barely moves with background load.

    .venv/bin/python benchmarks/serving_bench.py [--images 512 --batch 8 ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
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


def drive_async(
    handle: Any, work: list[Any], concurrency: int, prepare: Any = None
) -> tuple[float, list[float]]:
    """``concurrency`` asyncio clients on one event loop send the requests in
    ``work`` (``prepare(item)`` turns an item into the payload inside the timed
    loop, so its cost counts); (images/s, per-request latencies)."""
    import asyncio

    lat: list[float] = []
    n_images = 0

    async def run() -> float:
        nonlocal n_images
        nxt = iter(work)

        async def client() -> None:
            nonlocal n_images
            for item in nxt:
                s = time.perf_counter()
                req = prepare(item) if prepare else item
                out = await handle.remote(req)
                n_images += len(out) if isinstance(out, list) else 1
                lat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - t0

    secs = asyncio.run(run())
    return n_images / secs, lat


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds) of this process and all its descendants (the
    local Ray: GCS, raylet, Serve controller, proxy, replicas, workers)."""
    table: dict[int, tuple[int, str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        table[int(d.name)] = (int(f[1]), cmd, (int(f[11]) + int(f[12])) / TICK)
    me = os.getpid()
    tree, grew = {me}, True
    while grew:
        kids = {p for p, (pp, _, _) in table.items() if pp in tree} - tree
        grew = bool(kids)
        tree |= kids
    out = {}
    for pid in tree & table.keys():
        cmd = table[pid][1]
        name = "client (this process)" if pid == me else Path(cmd.split()[0]).name if cmd else "?"
        if name.startswith("ray::ServeReplica"):
            name = "replica"
        elif name.startswith("ray::"):
            name = name.split(".")[0]
        out[pid] = (name, table[pid][2])
    return out


def cpu_delta(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in process_cpu().items():
        by_name[name] = by_name.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return by_name


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512, help="images per measured round")
    ap.add_argument("--batch", type=int, default=8, help="bare batch = serve max_batch_size")
    ap.add_argument("--model", choices=["flywheel", "light"], default="flywheel")
    ap.add_argument("--size", type=int, default=64, help="model input side (flywheel: 64)")
    ap.add_argument("--frame", default="240x320", help="HxW of the uint8 BGR input frames")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (both sides)")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight (chunked modes)")
    ap.add_argument("--per-image-in-flight", type=int, default=32, help="in flight (per-image)")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="serve batch_wait_timeout_s")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    a = ap.parse_args()

    import ray

    import algorithm_store as st
    from cloud.flywheel._export import preprocess_contract
    from cloud.serving import Predictor, ServingConfig, deploy_version
    from cloud.serving._deployment import requests_for

    fh, fw = (int(v) for v in a.frame.split("x"))
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8) for _ in range(64)]
    images = [pool[i % len(pool)] for i in range(a.images)]
    chunks = [images[i : i + a.batch] for i in range(0, len(images), a.batch)]
    hw = [a.size, a.size]

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

        pred = Predictor.from_store(store, "bench-cnn", "1.0.0", intra_op_threads=a.threads)
        pred.predict(images[: a.batch])  # warm

        def bare_round() -> tuple[float, list[float]]:
            lat: list[float] = []
            t0 = time.perf_counter()
            for chunk in chunks:
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
                max_ongoing_requests=max(a.batch, a.per_image_in_flight) * 2,
            )
            handle = deploy_version(store, "bench-cnn", "1.0.0", cfg)  # requests by value
            by_ref = handle.options(_by_reference=True)  # through the object store
            for h in (handle, by_ref):  # warm both transports
                for r in [h.remote(chunks[0]) for _ in range(4)]:
                    r.result()

            def resized(chunk: list[np.ndarray]) -> Any:
                return requests_for(chunk, len(chunk), hw)[0]

            # mode -> (images per request, requests in flight, round function)
            modes: dict[str, tuple[int, int, Any]] = {
                "bare": (a.batch, 1, bare_round),
                "frames": (a.batch, a.in_flight, lambda: drive_async(by_ref, chunks, a.in_flight)),
                "resized": (
                    a.batch,
                    a.in_flight,
                    lambda: drive_async(handle, chunks, a.in_flight, resized),
                ),
                "per-image": (
                    1,
                    a.per_image_in_flight,
                    lambda: drive_async(
                        handle,
                        images,
                        a.per_image_in_flight,
                        lambda im: requests_for([im], 1, hw)[0],
                    ),
                ),
            }
            rounds: dict[str, list[float]] = {m: [] for m in modes}
            lats: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, dict[str, float]] = {m: {} for m in modes}
            for _ in range(a.repeats):
                for mode, (_n, _c, fn) in modes.items():
                    before = process_cpu()
                    tput, lat = fn()
                    for name, sec in cpu_delta(before).items():
                        cpu[mode][name] = cpu[mode].get(name, 0.0) + sec
                    rounds[mode].append(tput)
                    lats[mode] += lat
            info = handle.info.remote().result()
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()

    load = os.getloadavg()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
        f", load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print(
        f"model: {a.model} CNN 3x{a.size}x{a.size} -> 4 classes; frames {fh}x{fw} uint8 BGR; "
        f"{a.images} images per round; ORT threads {a.threads}; {a.repeats} alternating rounds"
    )
    print(
        "modes: bare = Predictor.predict on batches (one process); frames = full frames, "
        f"{a.batch} per request, through the object store (the path before); resized = "
        "predict()'s requests: frames resized to the model input by the caller, stacked, "
        "by value over Serve's gRPC transport; per-image = the same, 1 image per request"
    )
    n_total = a.images * a.repeats
    for mode, (per_req, conc, _fn) in modes.items():
        r = rounds[mode]
        paired = [x / b for x, b in zip(r, rounds["bare"], strict=True)]
        c = cpu[mode]
        tot = sum(c.values()) / n_total * 1000
        top = sorted(c.items(), key=lambda kv: -kv[1])[:4]
        where = ", ".join(f"{n} {v / n_total * 1000:.2f}" for n, v in top)
        lat_kind = "batch" if mode == "bare" else "request"
        print(
            f"{mode:10s} {per_req:2d} img/req {conc:2d} in flight: median {np.median(r):6.1f} "
            f"img/s (best {max(r):6.1f}); vs bare: median of paired rounds "
            f"{np.median(paired):.2f}x; {lat_kind} p50 {pct(lats[mode], 50):6.1f} ms "
            f"p99 {pct(lats[mode], 99):6.1f} ms; CPU {tot:.2f} ms/img ({where})"
        )
    cpu_bare = sum(cpu["bare"].values())
    cpu_best = min(sum(cpu[m].values()) for m in ("resized", "frames"))
    sizes = info["batch_sizes"]
    served = sum(int(k) * v for k, v in sizes.items())
    print(f"batches formed by @serve.batch (images per model call -> calls): {sizes}")
    print(f"mean images per model call: {served / max(1, sum(sizes.values())):.1f}")
    paired = {
        m: float(np.median([x / b for x, b in zip(rounds[m], rounds["bare"], strict=True)]))
        for m in ("resized", "frames")
    }
    best_mode = max(paired, key=paired.__getitem__)
    verdict = "OK" if paired[best_mode] >= 0.8 else "BELOW TARGET"
    print(
        f"serve / bare throughput at batch {a.batch} ({best_mode}, median of paired rounds): "
        f"{paired[best_mode]:.2f}x (target >= 0.80x) -> {verdict}; CPU per image bare / serve: "
        f"{cpu_bare / cpu_best:.2f} (what the ratio tends to when every core is busy)"
    )


if __name__ == "__main__":
    main()
