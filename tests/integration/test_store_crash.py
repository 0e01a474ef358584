"""Publishing is atomic: a process killed (SIGKILL) mid-publish leaves no
half-visible version, and the same archive publishes cleanly afterwards."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import algorithm_store as st
from algorithm_store.testing import tiny_classifier_onnx, tiny_package_kwargs
from tests.conftest import REPO

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import algorithm_store as st
    from algorithm_store import _store

    root, key_path, archive, point = sys.argv[1:5]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "after_blob":  # blob renamed into place, index not touched
        _store.AlgorithmStore._index_version = lambda self, *a, **k: die()
    elif point == "in_transaction":  # version row inserted, transaction still open
        orig = _store.AlgorithmStore._log
        def log(con, algorithm, kind, *a):
            orig(con, algorithm, kind, *a)
            if kind == "promote":
                die()
        _store.AlgorithmStore._log = staticmethod(log)
    elif point == "before_blob":  # verified, killed while moving the blob
        orig_replace = os.replace
        def replace(src, dst, *a, **k):
            if "blobs" in str(dst):
                die()
            return orig_replace(src, dst, *a, **k)
        os.replace = replace
    store = st.AlgorithmStore(root, private_key=st.load_private_key(Path(key_path)))
    print("publishing", flush=True)
    store.publish(Path(archive), channel="stable")
    print("published", flush=True)
    """
)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("crash")
    key_path = st.keygen(tmp / "keys")
    key = st.load_private_key(key_path)
    model = tiny_classifier_onnx(tmp / "m" / "model.onnx", min_weight_bytes=4 << 20)
    built = st.build_package(
        model,
        id="cars",
        version="1.0.0",
        private_key=key,
        out_dir=tmp / "out",
        **tiny_package_kwargs(),
    )
    return key_path, built


def _child(root: Path, key_path: Path, archive: Path, point: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(key_path), str(archive), point],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_nothing_visible(root: Path, key_path: Path, sha: str) -> st.AlgorithmStore:
    store = st.AlgorithmStore(root, private_key=st.load_private_key(key_path))
    assert store.algorithms() == []
    assert store.transitions() == []
    with pytest.raises(st.NotFound):
        store.published_artifact(sha)
    with pytest.raises(st.NotFound):
        store.version("cars", "1.0.0")
    assert store.version_for("cars", "stable", "d1") is None
    return store


@pytest.mark.parametrize("point", ["before_blob", "after_blob", "in_transaction"])
def test_sigkill_mid_publish_leaves_nothing_visible(tmp_path: Path, pkg, point: str) -> None:
    key_path, built = pkg
    root = tmp_path / "store"
    proc = _child(root, key_path, built.archive, point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert "published" not in out.replace("publishing", "")
    store = _assert_nothing_visible(root, key_path, built.sha256)
    # the same archive publishes cleanly afterwards, orphan blob or not
    v = store.publish(built.archive, channel="stable")
    path, size = store.published_artifact(v.sha256)
    assert path.read_bytes() == built.archive.read_bytes()
    assert store.channels("cars") == {"stable": "1.0.0"}


def test_sigkill_at_random_moments_is_all_or_nothing(tmp_path: Path, pkg) -> None:
    key_path, built = pkg
    rng = random.Random(7)
    outcomes = set()
    for i in range(4):
        root = tmp_path / f"store{i}"
        proc = _child(root, key_path, built.archive, "none")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "publishing"
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        store = st.AlgorithmStore(root, private_key=st.load_private_key(key_path))
        if store.algorithms():
            outcomes.add("visible")
            v = store.version("cars", "1.0.0")
            path, _ = store.published_artifact(v.sha256)
            assert path.read_bytes() == built.archive.read_bytes()
            assert store.channels("cars") == {"stable": "1.0.0"}
        else:
            outcomes.add("invisible")
            _assert_nothing_visible(root, key_path, built.sha256)
            store.publish(built.archive)
            assert store.version("cars", "1.0.0").sha256 == built.sha256
