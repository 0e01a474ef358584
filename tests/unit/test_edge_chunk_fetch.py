"""ChunkFetcher's progress records: batched (not an fsync per chunk), and what
was verified is kept when a download stops part-way.

The session here is an in-process stand-in that answers chunk requests from
memory on another thread, as the store would through the broker."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import _fetch
from edge_agent._errors import Superseded
from edge_agent._fetch import ChunkFetcher, _Partial
from edge_agent._stats import Stats
from edge_agent.protocol import ArtifactRef, ChunkReplyHeader, ChunkRequest, decode


class MemorySession:
    """Answers ``store/chunk/req`` from ``data`` on a thread, like the store."""

    device = "unit-dev"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()
        self.cb: Any = None
        self.asked: list[int] = []

    def subscribe(self, topic: str, cb: Any) -> None:
        self.cb = cb

    def publish(self, topic: str, payload: bytes, qos: int, properties: Any) -> None:
        req = decode(payload, ChunkRequest)
        self.asked.append(req.offset)
        chunk = self.data[req.offset : req.offset + req.length]
        header = ChunkReplyHeader(
            sha256=req.sha256,
            offset=req.offset,
            length=len(chunk),
            total=len(self.data),
            chunk_sha256=hashlib.sha256(chunk).hexdigest(),
        )
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = properties.CorrelationData
        props.UserProperty = header.to_user_properties()
        msg = SimpleNamespace(properties=props, payload=chunk)
        threading.Thread(target=self.cb, args=(msg,), daemon=True).start()


def _setup(tmp_path: Path, size: int) -> tuple[MemorySession, ArtifactRef, _Partial]:
    data = bytes(range(256)) * (size // 256)
    session = MemorySession(data)
    ref = ArtifactRef(sha256=session.sha, size=len(data), signature="unused-here")
    (tmp_path / "staging").mkdir()
    return session, ref, _Partial(tmp_path / "staging", ref)


def test_progress_is_recorded_in_batches_not_per_chunk(tmp_path: Path, monkeypatch) -> None:
    session, ref, part = _setup(tmp_path, 10 * 1024 * 1024)
    saves: list[int] = []
    real_save = _Partial.save

    def save(self: _Partial, verified: int, etag: str | None = None) -> None:
        saves.append(verified)
        real_save(self, verified, etag)

    monkeypatch.setattr(_Partial, "save", save)
    monkeypatch.setattr(_fetch, "_SAVE_S", 3600.0)  # by bytes only here
    fetcher = ChunkFetcher(
        session, Stats(), chunk_size=64 * 1024, window=4, timeout_s=10, retries=1
    )
    fetcher.fetch(ref, part, lambda: False, lambda done, total: None)
    assert part.data.read_bytes() == session.data
    assert len(session.asked) == 160  # every chunk asked once
    # 160 chunks, 3 records: after 4 MiB, 8 MiB and at the end
    assert saves == [4 * 1024 * 1024, 8 * 1024 * 1024, ref.size]


def test_a_stopped_download_keeps_everything_verified(tmp_path: Path, monkeypatch) -> None:
    session, ref, part = _setup(tmp_path, 2 * 1024 * 1024)
    monkeypatch.setattr(_fetch, "_SAVE_S", 3600.0)
    stop_after = 5 * 64 * 1024
    fetcher = ChunkFetcher(
        session, Stats(), chunk_size=64 * 1024, window=1, timeout_s=10, retries=1
    )
    seen: list[int] = []

    def cancel() -> bool:  # asked between chunks; stop once 5 chunks are in
        seen.append(len(session.asked))
        return len(session.asked) > 5

    with pytest.raises(Superseded):
        fetcher.fetch(ref, part, cancel, lambda done, total: None)
    state = json.loads(part.state.read_text())
    assert state["verified"] >= stop_after  # not lost although under the batch size
    assert part.data.read_bytes()[: state["verified"]] == session.data[: state["verified"]]
    # and the next fetch goes on from there
    before = len(session.asked)
    fetcher.fetch(ref, part, lambda: False, lambda done, total: None)
    assert session.asked[before] == state["verified"]
    assert part.data.read_bytes() == session.data
