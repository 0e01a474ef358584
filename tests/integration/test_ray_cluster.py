"""The scale-out path (issue 8 item 4, issue 5 item 2): the same embedding job
in-process, on a local Ray and on a two-node Ray cluster this test starts on
this machine (``ray start --head`` + ``ray start --address``, one CPU each),
with the same vectors written in sample order; both nodes do work. A mining
scoring job gives the same probabilities on the cluster as locally.

Every Ray process the test starts is found by its temp dir (and as a
descendant of those) and killed by pid in teardown, even on failure; ``ray
stop`` is not used because it would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud.catalog import Catalog
from cloud.core.config import Settings
from cloud.errors import InvalidInput
from cloud.flywheel._backbones import scratch_backbone
from cloud.flywheel._ray import embed_dataset
from cloud.flywheel._synthetic import street_scenes
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = Path(sys.executable).parent / "ray"
OBJECT_STORE = str(80 * 1024 * 1024)  # the smallest Ray accepts is 75 MiB
N_SAMPLES = 24
BATCH = 4  # 6 batches: enough for every worker to get some


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(d.name)] = (ppid, cmd)
    return out


def _ours(temp_dir: str) -> set[int]:
    """Processes of the Ray started with ``temp_dir``: those naming it on
    their command line, and all their descendants (workers retitle themselves)."""
    table = _proc_table()
    found = {pid for pid, (_, cmd) in table.items() if temp_dir in cmd and pid != os.getpid()}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        grew = bool(kids)
        found |= kids
    return found


def _kill_ours(temp_dir: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _ours(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
            time.sleep(0.2)
    left = {p for p in _ours(temp_dir) if not _zombie(p)}
    assert not left, f"Ray processes left running: {sorted(left)}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _ray_start(args: list[str], temp_dir: str) -> None:
    # token auth on every node and the driver: with RAY_AUTH_MODE unset a head
    # that finds ~/.ray/auth_token enables it while a joining node does not
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [str(RAY), "start", *args, "--num-cpus", "1", "--object-store-memory", OBJECT_STORE,
         "--temp-dir", temp_dir, "--disable-usage-stats",
         "--dashboard-agent-listen-port", str(free_port()),
         "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()),
         "--metrics-export-port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, f"ray start {args} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and a second node (one CPU each) on this machine; their address."""
    if not RAY.is_file():
        pytest.fail(f"{RAY} missing: ray is a cloud dependency (scripts/setup.sh)")
    temp_dir = tempfile.mkdtemp(prefix="cbray", dir="/tmp")  # short: socket paths < 108 chars
    port = free_port()
    address = f"127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "token")
    try:
        _ray_start(
            ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
             "--include-dashboard", "false", "--ray-client-server-port", str(free_port())],
            temp_dir,
        )  # fmt: skip
        _ray_start(["--address", address, "--node-ip-address", "127.0.0.1"], temp_dir)
        yield address
    finally:
        mp.undo()
        _kill_ours(temp_dir)
        subprocess.run(["rm", "-rf", temp_dir], timeout=60, check=False)


def _catalog(root: Path, **settings: object) -> Catalog:
    cat = Catalog.open(Settings(data_dir=root, **settings))
    cat.create_dataset("street", labels=["a", "b"])
    for img in street_scenes(N_SAMPLES, seed=4)[0]:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        cat.add_image_bytes("street", buf.tobytes(), source="synthetic")
    return cat


def _ids(cat: Catalog) -> list[str]:
    return [it.sample_id for it in cat.iter_items("street")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray]:
    """The in-process embeddings of the job (no Ray)."""
    cat = _catalog(tmp_path_factory.mktemp("inproc"))
    try:
        ids = _ids(cat)
        store, run = embed_dataset(cat, scratch_backbone(), ids, batch=BATCH, executor="local")
        assert run.executor == "local" and store.ids == ids
        return ids, np.array(store.get(ids))
    finally:
        cat.close()


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def test_local_ray_gives_the_in_process_vectors_incrementally(
    reference: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    import ray

    ids, want = reference
    assert not ray.is_initialized()
    # a local ray.init() (no address configured), workers receive the image bytes
    cat = _catalog(tmp_path / "a", ray_min_samples=N_SAMPLES // 2)
    steps: list[str] = []
    try:
        first = ids[: N_SAMPLES // 2]
        store, run = embed_dataset(
            cat, scratch_backbone(), first, batch=BATCH, progress=lambda f, m: steps.append(m)
        )
        assert run.executor == "ray" and "ray_min_samples" in run.reason  # decided by size
        assert run.samples == len(first) and run.workers >= 1 and sum(run.nodes.values()) == 3
        assert store.ids == first and "on Ray" in steps[-1]
        store, run = embed_dataset(cat, scratch_backbone(), ids, batch=BATCH, executor="ray")
        assert (run.samples, run.already) == (N_SAMPLES - len(first), len(first))  # incremental
        assert store.ids == ids  # sample order
        np.testing.assert_allclose(store.get(ids), want, rtol=1e-4, atol=1e-5)
    finally:
        cat.close()
    # the same job with workers reading blob files by path (shared storage)
    cat = _catalog(tmp_path / "b", ray_blob_paths=True)
    try:
        store, run = embed_dataset(cat, scratch_backbone(), ids, batch=BATCH, executor="ray")
        assert store.ids == ids
        np.testing.assert_allclose(store.get(ids), want, rtol=1e-4, atol=1e-5)
        # a worker's error reaches the caller as itself; only whole batches
        # before the bad one were written, and a rerun does the rest
        blob = cat.blobs.path(ids[9])
        good = blob.read_bytes()
        blob.write_bytes(b"not the image")
        other = scratch_backbone(seed=1)
        with pytest.raises(InvalidInput, match="is corrupt"):
            embed_dataset(cat, other, ids, batch=BATCH, executor="ray")
        from cloud.flywheel._pipeline import embedding_store

        kept = embedding_store(cat, other).ids
        assert kept == ids[: len(kept)] and len(kept) % BATCH == 0 and len(kept) <= 8
        blob.write_bytes(good)
        store, run = embed_dataset(cat, other, ids, batch=BATCH, executor="ray")
        assert run.already == len(kept) and store.ids == ids
    finally:
        cat.close()
        _shutdown_ray()


def test_two_node_cluster_gives_the_same_result_with_both_nodes_working(
    cluster: str, reference: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    import ray

    from cloud.flywheel.mining._run import LinearHead
    from cloud.flywheel.mining._scale import batched_probs

    ids, want = reference
    cat = _catalog(tmp_path / "c", ray_address=cluster)
    try:
        store, run = embed_dataset(cat, scratch_backbone(), ids, batch=BATCH, executor="ray")
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2, alive
        # Ray reports the GCS under the node's address, not 127.0.0.1
        assert run.address.endswith(cluster.rsplit(":", 1)[1]) and run.workers == 2
        assert len(run.nodes) == 2, f"only {run.nodes} did work"  # both nodes embedded
        assert set(run.nodes) == {n["NodeID"] for n in alive}
        assert sum(run.nodes.values()) == N_SAMPLES // BATCH
        assert store.ids == ids
        got = np.array(store.get(ids))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

        # a mining scoring job on the same embeddings: cluster == local
        rng = np.random.default_rng(0)
        head = LinearHead(rng.standard_normal((got.shape[1], 3)), rng.standard_normal(3))
        local = batched_probs(got, head, batch=5)
        remote = batched_probs(got, head, batch=5, use_ray=True, ray_tasks=2)
        np.testing.assert_allclose(remote, local, rtol=1e-6, atol=1e-7)
    finally:
        cat.close()
        _shutdown_ray()
