"""Publish latency for a large package: build (ONNX check, golden, hashes,
sign, archive) and publish (copy + sha256, verify signature and every file
hash, onnx.checker, golden check with ONNX Runtime, blob write, one index
transaction).

    .venv/bin/python benchmarks/store_publish_bench.py            # 50 MB, 3 runs
    .venv/bin/python benchmarks/store_publish_bench.py --size-mb 10 --runs 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()

    import algorithm_store as st
    from algorithm_store import _onnx
    from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
    from edge_agent.protocol import extract_package_archive, verify_package_dir

    work = Path(tempfile.mkdtemp(prefix="cb-publish-bench-"))
    try:
        key = st.load_private_key(st.keygen(work / "keys"))
        pub = st.public_key_raw(key)
        model = tiny_classifier_onnx(
            work / "m" / "model.onnx", size=64, min_weight_bytes=int(a.size_mb * 1e6)
        )
        build_s, publish_s, sign_hash_s, verify_pkg_s, check_s = [], [], [], [], []
        size = 0
        for i in range(a.runs):
            t0 = time.perf_counter()
            built = st.build_package(
                model,
                id="bench",
                version=f"1.0.{i}",
                private_key=key,
                out_dir=work / "out",
                **tiny_package_kwargs(),
            )
            build_s.append(time.perf_counter() - t0)
            size = built.size
            store = st.AlgorithmStore(work / f"store{i}", private_key=key)
            t0 = time.perf_counter()
            store.publish(built.archive, channel="stable")
            publish_s.append(time.perf_counter() - t0)
            # the parts: sign + hash (what the issue calls publish latency's core)
            d = work / f"x{i}"
            t0 = time.perf_counter()
            h = hashlib.sha256()
            with open(built.archive, "rb") as f:
                while b := f.read(1 << 20):
                    h.update(b)
            st.sign_manifest(built.manifest, key)
            sign_hash_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            extract_package_archive(built.archive, d)
            verify_package_dir(d, pub)
            verify_pkg_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _onnx.check_model(d / "model.onnx", d)
            check_s.append(time.perf_counter() - t0)
            shutil.rmtree(d)
        med = statistics.median
        print(f"package {size / 1e6:.1f} MB, {a.runs} runs, cores {os.cpu_count()}")
        print(
            f"build_package (check, golden, cost profile, hash, sign, archive): {med(build_s):.2f} s median"
        )
        print(
            f"publish (copy+sha256, verify sig+hashes, onnx.checker, golden, blob, index): "
            f"{med(publish_s):.2f} s median (min {min(publish_s):.2f})"
        )
        print(
            f"  of which: sha256 of archive + ed25519 sign {med(sign_hash_s) * 1000:.0f} ms; "
            f"extract + verify signature and file hashes {med(verify_pkg_s) * 1000:.0f} ms; "
            f"onnx.checker full check {med(check_s) * 1000:.0f} ms"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
