"""Helpers shared by the API / console tests: tiny generated images, an
in-process app with tokens of every role, a `citybrain serve` subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tests.conftest import REPO, free_port, port_answers

ADMIN_TOKEN = "cb_test_admin_token_0123456789"
#: unit tests: live events are best effort, an unreachable Redis must not matter
NO_REDIS = "redis://127.0.0.1:1/0"


def png_bytes(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """A distinct small image (coloured blocks, so perceptual hashes differ)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((h // 4 + 1, w // 4 + 1, 1), np.uint8))[:h, :w]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.png"
        p.write_bytes(png_bytes(i))
        out.append(p)
    return out


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def serve_subprocess(data_dir: Path, *, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`citybrain serve` on a free port with its own data dir; yields the base URL."""
    port = free_port()
    env = {
        **os.environ,
        "CITYBRAIN_DATA_DIR": str(data_dir),
        "CITYBRAIN_BOOTSTRAP_TOKEN": ADMIN_TOKEN,
        "CITYBRAIN_REDIS_URL": os.environ.get(
            "CITYBRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
        ),
        **(extra_env or {}),
    }
    env.pop("CITYBRAIN_DB_URL", None)
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "citybrain"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_answers(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"citybrain serve exited: {(data_dir / 'serve.log').read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("citybrain serve did not start in 120 s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
