"""Sources (video file, image folder, URL), the 1-slot latest-frame buffer that
drops instead of queueing, error state with retry, atomic model swap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import SourceError
from edge_agent._runtime import Result
from edge_agent._streams import StreamWorker, open_source
from tests.edge_support import VIDEO, wait_for


class FakeModel:
    """In-memory stand-in for a loaded model (unit test only)."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.calls = 0

    def run(self, frame: np.ndarray) -> Result:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return Result([], np.array([0.5], np.float32), None, inference_ms=self.delay * 1000)


def test_video_file_once_and_loop() -> None:
    frames = open_source(str(VIDEO), loop=False)
    first = next(frames)
    assert first.shape == (576, 768, 3)
    looping = open_source(str(VIDEO), loop=True)
    assert next(looping) is not None


def test_image_folder(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    got = list(open_source(str(tmp_path), loop=False))
    assert [int(g[0, 0, 0]) for g in got] == [0, 50, 100]


@pytest.mark.parametrize("source", ["/no/such/file.avi", "rtsp://127.0.0.1:1/none"])
def test_unopenable_sources_raise(source: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        open_source(source, loop=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"), loop=False)
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "bad.avi"), loop=False)


def test_slow_model_drops_frames_instead_of_queueing() -> None:
    slow = FakeModel("slow", delay=0.1)
    w = StreamWorker("s", str(VIDEO), slow, fps=100, loop=True).start()
    try:
        wait_for(lambda: w.frames >= 5, 20)
        wait_for(lambda: w.dropped > 0, 20)
        h = w.health()
        assert h.state == "running" and h.dropped > 0
        # everything read was inferred or dropped; at most one frame waits in the slot
        assert w.read - (w.frames + w.dropped) in (0, 1, 2)
    finally:
        w.stop()
    assert w.health().state == "stopped"


def test_swap_is_atomic_and_keeps_running() -> None:
    a, b = FakeModel("a"), FakeModel("b")
    seen: list[str] = []
    lock = threading.Lock()

    def on_result(worker, frame, model, res, shadow):  # type: ignore[no-untyped-def]
        with lock:
            seen.append(model.name + ("+shadow" if shadow is not None else ""))

    w = StreamWorker("s", str(VIDEO), a, fps=50, on_result=on_result).start()
    try:
        wait_for(lambda: len(seen) >= 3)
        w.swap(b, shadow_frames=2)
        wait_for(lambda: len(seen) >= 10)
    finally:
        w.stop()
    first_b = next(i for i, s in enumerate(seen) if s.startswith("b"))
    assert all(s == "a" for s in seen[:first_b])
    assert seen[first_b : first_b + 2] == ["b+shadow", "b+shadow"]  # canary: old runs as shadow
    assert all(s == "b" for s in seen[first_b + 2 :])


def test_play_once_ends_stopped(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((8, 8, 3), np.uint8))
    m = FakeModel("m")
    w = StreamWorker("s", str(tmp_path), m, fps=50, loop=False).start()
    wait_for(lambda: w.state == "stopped")
    assert w.frames == 1
    w.stop()


def test_source_error_state_and_recovery(tmp_path: Path) -> None:
    target = tmp_path / "later"
    w = StreamWorker("s", str(target), FakeModel("m"), fps=20, retry_max_s=0.5).start()
    try:
        wait_for(lambda: w.state == "error")
        assert "no such file" in (w.health().error or "")
        target.mkdir()
        cv2.imwrite(str(target / "0.png"), np.zeros((8, 8, 3), np.uint8))
        wait_for(lambda: w.state == "running" and w.frames > 0, 10)
        assert w.health().error is None
    finally:
        w.stop()
