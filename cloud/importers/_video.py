"""Frame sampling from videos with near-duplicate removal (dHash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cloud.catalog._media import dhash_bgr
from cloud.errors import InvalidInput

DEFAULT_EVERY_S = 1.0
JPEG_QUALITY = 95


@dataclass(slots=True)
class Frame:
    index: int
    jpeg: bytes
    width: int
    height: int
    phash: str


@dataclass(slots=True)
class VideoStats:
    sampled: int = 0
    duplicates: int = 0
    frames: int = 0  # total frame count as reported by the container (estimate)


def probe_video(path: Path, display: str) -> tuple[float, int]:
    """(fps, frame count) of a video that decodes; ``InvalidInput`` otherwise."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InvalidInput(
                f"{display}: cannot open video (unknown or corrupt format)", field="file"
            )
        ok, frame = cap.read()
        if not ok or frame is None:
            raise InvalidInput(f"{display}: video has no decodable frame", field="file")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return (fps if 0 < fps < 1000 else 25.0), max(count, 1)
    finally:
        cap.release()


def frame_step(fps: float, every_k: int | None, every_s: float | None) -> int:
    if every_k is not None and every_s is not None:
        raise InvalidInput("give every_k or every_s, not both", field="every_k")
    if every_k is not None:
        if every_k < 1:
            raise InvalidInput("every_k must be at least 1", field="every_k")
        return every_k
    s = DEFAULT_EVERY_S if every_s is None else every_s
    if s <= 0:
        raise InvalidInput("every_s must be positive", field="every_s")
    return max(1, round(s * fps))


def sample_frames(
    path: Path,
    display: str,
    *,
    step: int,
    dedup_threshold: int,
    stats: VideoStats,
    on_frame: Callable[[int], None] | None = None,
) -> Iterator[Frame]:
    """Every ``step``-th frame, JPEG-encoded, dropping frames whose dHash is
    within ``dedup_threshold`` bits of a frame already kept (negative: keep all)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InvalidInput(
            f"{display}: cannot open video (unknown or corrupt format)", field="file"
        )
    kept = np.zeros(0, dtype=np.uint64)
    try:
        stats.frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        idx = -1
        while True:
            idx += 1
            if idx % step:
                if not cap.grab():
                    break
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if on_frame is not None:
                on_frame(idx)
            stats.sampled += 1
            h = dhash_bgr(frame)
            hv = np.uint64(int(h, 16))
            if dedup_threshold >= 0 and kept.size:
                dist = np.unpackbits(np.bitwise_xor(kept, hv).view(np.uint8)).reshape(-1, 64).sum(1)
                if int(dist.min()) <= dedup_threshold:
                    stats.duplicates += 1
                    continue
            kept = np.append(kept, hv)
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:  # pragma: no cover - encoding a decoded frame does not fail
                raise InvalidInput(f"{display}: frame {idx} cannot be encoded", field="file")
            yield Frame(idx, buf.tobytes(), frame.shape[1], frame.shape[0], h)
    finally:
        cap.release()
    if stats.sampled == 0:
        raise InvalidInput(f"{display}: video has no decodable frame", field="file")
