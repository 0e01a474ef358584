"""Video sources and the per-stream worker.

A reader thread pulls frames from OpenCV (video file, image folder, rtsp/http
URL) at the assignment's target fps into a ONE-slot latest-frame buffer; the
inference thread takes whatever frame is newest. When inference is slower than
the source, frames are overwritten (dropped, and counted) instead of queued.
A source that cannot be opened puts the stream in ``error`` with the reason and
is retried with backoff; the agent keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent._errors import SourceError
from edge_agent._metrics import Histogram
from edge_agent.protocol import StreamHealth

log = logging.getLogger("edge_agent.streams")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def is_url(source: str) -> bool:
    return source.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "rtmp", "udp")


def open_source(source: str, *, loop: bool) -> Iterator[np.ndarray]:
    """Frames of ``source``; raises SourceError when it cannot be opened."""
    if is_url(source):
        return _capture(source, loop=False, live=True)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{source}: image folder has no images")
        return _folder(files, loop=loop)
    if not path.exists():
        raise SourceError(f"{source}: no such file or folder")
    return _capture(source, loop=loop, live=False)


def _capture(source: str, *, loop: bool, live: bool) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{source}: OpenCV cannot open it")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(f"{source}: opened but no frame could be read")

    def gen() -> Iterator[np.ndarray]:
        frame: np.ndarray | None = first
        try:
            while True:
                if frame is not None:
                    yield frame
                ok, frame = cap.read()
                if not ok or frame is None:
                    if live:
                        raise SourceError(f"{source}: stream ended or read failed")
                    if not loop:
                        return
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                    if not ok:
                        raise SourceError(f"{source}: cannot rewind")
        finally:
            cap.release()

    return gen()


def _folder(files: list[Path], *, loop: bool) -> Iterator[np.ndarray]:
    def gen() -> Iterator[np.ndarray]:
        while True:
            good = 0
            for f in files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    continue
                good += 1
                yield img
            if not good:
                raise SourceError(f"{files[0].parent}: no readable image in folder")
            if not loop:
                return

    return gen()


OnResult = Callable[["StreamWorker", np.ndarray, Any, Any, Any], None]


class StreamWorker:
    """Runs one assignment's model on one source."""

    def __init__(
        self,
        stream: str,
        source: str,
        model: Any,
        *,
        fps: float,
        loop: bool = True,
        retry_max_s: float = 30.0,
        on_result: OnResult | None = None,
    ) -> None:
        self.stream = stream
        self.source = source
        self.fps = fps
        self.loop = loop
        self.retry_max_s = retry_max_s
        self.model = model
        self.shadow: Any = None
        self.shadow_left = 0
        self.on_result = on_result
        self.state = "running"
        self.error: str | None = None
        self.frames = 0
        self.read = 0
        self.dropped = 0
        self.errors = 0
        self.inference_ms = 0.0
        self.latency = Histogram()  # inference seconds, for /metrics
        self._times: deque[float] = deque(maxlen=64)
        self._slot: np.ndarray | None = None
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._reader_done = False
        self._reader = threading.Thread(target=self._read_loop, name=f"read-{stream}", daemon=True)
        self._worker = threading.Thread(
            target=self._infer_loop, name=f"infer-{stream}", daemon=True
        )

    def start(self) -> StreamWorker:
        self._reader.start()
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._reader.join(timeout)
        self._worker.join(timeout)
        if self.state == "running":
            self.state = "stopped"

    def swap(self, model: Any, *, shadow_frames: int = 0) -> None:
        """Atomically switch to ``model``; the old one may run as a shadow for a while."""
        old = self.model
        self.shadow, self.shadow_left = (old, shadow_frames) if shadow_frames else (None, 0)
        self.model = model

    # -- threads -----------------------------------------------------------
    def _read_loop(self) -> None:
        backoff = 1.0
        period = 1.0 / self.fps
        while not self._stop.is_set():
            try:
                frames = open_source(self.source, loop=self.loop)
                next_t = time.monotonic()
                for frame in frames:
                    if self._stop.is_set():
                        return
                    if self.state == "error":
                        self.state, self.error = "running", None
                    backoff = 1.0
                    now = time.monotonic()
                    if now < next_t:
                        if self._stop.wait(next_t - now):
                            return
                    next_t = max(next_t + period, time.monotonic() - period)
                    with self._cv:
                        if self._slot is not None:
                            self.dropped += 1
                        self._slot = frame
                        self.read += 1
                        self._cv.notify()
                # a source played once has ended
                with self._cv:
                    self._reader_done = True
                    self._cv.notify_all()
                return
            except SourceError as e:
                self.state, self.error = "error", str(e)
                log.warning("stream %s: %s (retry in %.0fs)", self.stream, e, backoff)
            except Exception as e:  # noqa: BLE001 - OpenCV can raise anything
                self.state, self.error = "error", f"{self.source}: {e}"
                log.exception("stream %s reader failed", self.stream)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.retry_max_s)

    def _infer_loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._slot is not None or self._stop.is_set() or self._reader_done
                )
                if self._stop.is_set():
                    return
                frame, self._slot = self._slot, None
                if frame is None:  # source finished
                    self.state = "stopped"
                    return
            model = self.model
            try:
                res = model.run(frame)
            except Exception as e:  # noqa: BLE001 - keep the stream alive
                self.errors += 1
                self.error = f"{self.errors} inference errors; last: {e}"
                log.warning("stream %s: inference failed: %s", self.stream, e)
                continue
            shadow_res = None
            shadow = self.shadow
            if shadow is not None and self.shadow_left > 0:
                self.shadow_left -= 1
                try:
                    shadow_res = shadow.run(frame)
                except Exception:  # noqa: BLE001
                    shadow_res = None
                if self.shadow_left <= 0:
                    self.shadow = None
            self.frames += 1
            self.inference_ms = (
                res.inference_ms
                if self.frames == 1
                else (0.9 * self.inference_ms + 0.1 * res.inference_ms)
            )
            self.latency.observe(res.inference_ms / 1000.0)
            self._times.append(time.monotonic())
            if self.on_result is not None:
                try:
                    self.on_result(self, frame, model, res, shadow_res)
                except Exception:  # noqa: BLE001
                    log.exception("stream %s: result handler failed", self.stream)

    # -- health ------------------------------------------------------------
    def measured_fps(self) -> float:
        t = list(self._times)
        if len(t) < 2 or time.monotonic() - t[-1] > 5:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    def health(self) -> StreamHealth:
        return StreamHealth(
            stream=self.stream,
            state=self.state,  # type: ignore[arg-type]
            fps=round(self.measured_fps(), 3),
            frames=self.frames,
            dropped=self.dropped,
            inference_ms=round(self.inference_ms, 3),
            error=self.error,
        )
