"""Wall time and peak memory of ``citybrain demo --headless`` (default size),
with the closed-loop accuracy of round 1 vs round 2.

    .venv/bin/python benchmarks/demo_bench.py [--size default|small] [--keep]

Runs the demo as a subprocess on a fresh temporary data dir and a free port,
sampling the resident memory of the whole process tree (the demo, the
`citybrain serve` it starts, a redis-server / mosquitto if it had to start
them) from /proc every 0.25 s. Prints the figures, the per-stage timings and
the accuracy on the held-out synthetic ground truth after each round (from
``<data_dir>/demo/result.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_mb(pid: int) -> float:
    kids, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="default", choices=["default", "small"])
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="citybrain-demo-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "citybrain"), "demo", "--headless", "--size",
           args.size, "--data-dir", str(data / "d"), "--port", str(port)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "CITYBRAIN_DATA_DIR"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(p.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    lines = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        print(line, end="", flush=True)
    rc = p.wait()
    wall = time.perf_counter() - t0
    th.join()
    print()
    print(f"command: {' '.join(cmd)}")
    print(f"exit code: {rc}")
    print(f"wall time: {wall:.1f} s")
    print(f"peak RSS of the process tree: {peak[0]:.0f} MiB")
    res = data / "d" / "demo" / "result.json"
    if res.exists():
        r = json.loads(res.read_text())
        print(f"round 1 accuracy ({r['v1']}): {r['round1_accuracy']:.3f}")
        print(f"round 2 accuracy ({r['v2']}): {r['round2_accuracy']:.3f}")
        print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    else:
        print(f"data dir kept: {data / 'd'}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
