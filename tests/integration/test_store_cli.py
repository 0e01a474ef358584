"""`citybrain store ...` as a user runs it: a user's own ONNX goes through
keygen, publish to canary, a staged rollout to stable, rollback; bad input
exits 2 with one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import algorithm_store as st
from algorithm_store.testing import repack, tiny_classifier_onnx
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYBRAIN_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-c", "from cloud.cli import main; main()", "store", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def _refused(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], r.stderr


def test_store_cli_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "cb"
    model_v1 = tiny_classifier_onnx(tmp_path / "v1" / "my-model.onnx", seed=1)
    model_v2 = tiny_classifier_onnx(tmp_path / "v2" / "my-model.onnx", seed=2)
    _refused(_cli(d, "list"), "citybrain store keygen")
    assert "key id" in _ok(_cli(d, "keygen"))
    _refused(_cli(d, "keygen"), "refusing to overwrite")
    pub_args = ["--id", "byo", "--labels", "car,person,bike", "--metric", "accuracy=0.8"]
    out = _ok(
        _cli(d, "publish", str(model_v1), "--version", "1.0.0", "--channel", "stable", *pub_args)
    )
    assert "published byo 1.0.0" in out
    _ok(_cli(d, "publish", str(model_v2), "--version", "1.1.0", "--channel", "canary", *pub_args))
    _refused(
        _cli(
            d,
            "publish",
            str(model_v2),
            "--version",
            "1.1.0",
            "--out-dir",
            str(tmp_path / "o"),
            *pub_args,
        ),
        "immutable",
    )
    _refused(_cli(d, "publish", str(model_v2), "--version", "2.0.0"), "--id")
    _refused(
        _cli(d, "publish", str(model_v2), "--version", "2.0.0", *pub_args[:-2], "--metric", "x"),
        "metric",
    )
    assert "stable=1.0.0" in _ok(_cli(d, "list"))
    assert '"version": "1.1.0"' in _ok(_cli(d, "show", "byo"))
    _refused(_cli(d, "show", "nope"), "no algorithm")

    archive = d / "store" / "builds" / "byo-1.1.0.tar"
    assert "ok: byo 1.1.0" in _ok(_cli(d, "verify", str(archive)))
    tampered = repack(archive, tmp_path / "t.tar", manifest_update={"metrics": {"accuracy": 1.0}})
    _refused(_cli(d, "verify", str(tampered)), "signature does not verify")
    other = st.keygen(tmp_path / "other")
    _refused(
        _cli(d, "verify", str(archive), "--public-key", str(st.public_key_path(other))),
        "pinned key",
    )

    out = _ok(
        _cli(
            d,
            "rollout",
            "start",
            "byo",
            "1.1.0",
            "stable",
            "--group",
            "lab=d1",
            "--group",
            "rest=100%",
            "--devices",
            "d2,d3",
        )
    )
    assert "rollout 1" in out and "running" in out
    status = _ok(_cli(d, "rollout", "status", "1"))
    assert "lab: 1 devices" in status and "(not started)" in status
    store = st.AlgorithmStore(d / "store", public_key=(d / "store" / "key.pub").read_bytes())
    for wave in (["d1"], ["d2", "d3"]):  # the second group reports once it was started
        store.observe(
            [
                st.DeviceReport(device=x, algorithm="byo", version="1.1.0", healthy=True)
                for x in wave
            ]
        )
    assert "succeeded" in _ok(_cli(d, "rollout", "status"))
    assert store.channels("byo")["stable"] == "1.1.0"

    _refused(_cli(d, "promote", "byo", "1.0.0", "stable"), "explicit rollback")
    assert "1.1.0 -> 1.0.0 (rollback)" in _ok(
        _cli(d, "rollback", "byo", "stable", "--reason", "field")
    )
    assert store.channels("byo")["stable"] == "1.0.0"
    _refused(_cli(d, "rollout", "start", "byo", "1.1.0", "stable", "--group", "bad"), "NAME=")
