"""The artifact cache (LRU, pins, limit) and the hard-sample outbox (cap, acks, restart)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_agent import CacheFull
from edge_agent._cache import ArtifactCache
from edge_agent._config import HardSampleConfig, SelectorSpec
from edge_agent._hard import HardSampler
from edge_agent._outbox import Outbox
from edge_agent._runtime import Result
from edge_agent._stats import Stats
from edge_agent.protocol import HardSample, decode
from tests.edge_support import Keys, build_package


def staged(root: Path, name: str, size: int) -> tuple[str, Path]:
    d = root / f"stage-{name}"
    d.mkdir()
    (d / "f").write_bytes(os.urandom(size))
    return name * 64, d


def test_cache_lru_never_evicts_pinned(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "c", max_bytes=300)
    shas = []
    for n in "abc":
        sha, d = staged(tmp_path, n, 100)
        cache.make_room(100, for_what=n)
        cache.add(sha, d)
        shas.append(sha)
    a, b, c = shas
    cache.touch(a)  # a is now the most recently used
    cache.pin(b)
    assert cache.make_room(100, for_what="d") == [c]  # b pinned, a recent: c goes
    assert cache.has(a) and cache.has(b) and not cache.has(c)
    with pytest.raises(CacheFull, match="held by models in use"):
        cache.make_room(250, for_what="e")
    assert cache.has(b)
    with pytest.raises(CacheFull, match="more than the cache limit"):
        cache.make_room(301, for_what="huge")
    with pytest.raises(CacheFull, match="in use"):
        cache.remove(b)
    cache.unpin(b)
    cache.remove(b)
    # the index survives a restart, and unindexed dirs are found again
    sha_d, d = staged(tmp_path, "d", 10)
    os.replace(d, tmp_path / "c" / sha_d)
    again = ArtifactCache(tmp_path / "c", max_bytes=300)
    assert sorted(again.entries()) == sorted([a, sha_d])


def test_outbox_cap_acks_and_restart(tmp_path: Path) -> None:
    # the full receipt state machine is tested in test_edge_outbox.py
    stats = Stats()
    ob = Outbox(tmp_path / "o.sqlite", max_rows=3, stats=stats)
    for i in range(5):
        ob.add(f"key-{i}", "t", b"p%d" % i)
    assert ob.count() == 3 and stats.get("outbox_dropped") == 2
    rows = ob.due(2, now=0.0)
    assert [r.payload for r in rows] == [b"p2", b"p3"]  # oldest first, oldest two dropped
    assert [r.payload for r in ob.due(5, now=0.0)] == [b"p4"]  # in-flight rows not offered twice
    ob.acked(rows[0].id, rows[0].attempt, 0, 0.0, (1.0, 8.0))
    ob.acked(rows[1].id, rows[1].attempt, 0x97, 0.0, (1.0, 8.0))  # quota exceeded: retried
    assert ob.count() == 3 and stats.get("hard_requeued") == 1  # a PUBACK deletes nothing
    ob.add("key-4", "t", b"dup")  # same idempotency key: stored once
    assert ob.count() == 3
    ob.close()
    again = Outbox(tmp_path / "o.sqlite", max_rows=3, stats=stats)
    rows = again.due(10, now=0.0)
    assert [r.payload for r in rows] == [b"p2", b"p3", b"p4"]  # all unconfirmed rows come back
    again.receipt(["key-2"], {"key-3": "image_invalid: bad"})
    assert again.count() == 1 and stats.get("hard_rejected") == 1


def test_hard_sampler_encodes_limits_and_budgets(tmp_path: Path) -> None:
    stats = Stats()
    ob = Outbox(tmp_path / "o.sqlite", max_rows=100, stats=stats)
    cfg = HardSampleConfig(
        selectors=[
            SelectorSpec(
                kind="low_confidence", params={"low": 0.0, "high": 1.01}, limits={"per_minute": 2}
            )
        ],
        max_image_side=32,
    )
    keys = Keys(tmp_path)
    _, _, manifest = build_package(tmp_path, keys)
    hs = HardSampler(cfg, "dev-1", ob, stats)
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    res = Result([], np.array([0.5, 0.3, 0.2], np.float32))
    picks = [
        hs.consider(
            stream="s", frame=frame, manifest=manifest, result=res, shadow=None, centroids=None
        )
        for _ in range(3)
    ]
    assert picks == ["low_confidence", "low_confidence", None]
    assert stats.get("hard_rate_limited.low_confidence") == 1
    row = ob.due(1, now=0.0)[0]
    topic, payload = row.topic, row.payload
    s = decode(payload, HardSample)
    assert (
        topic == "cb/v1/dev/dev-1/hard"
        and s.selector == "low_confidence"
        and s.model_version == "1.0.0"
    )
    import base64

    import cv2

    img = cv2.imdecode(
        np.frombuffer(base64.b64decode(s.image_jpeg_b64 or ""), np.uint8), cv2.IMREAD_COLOR
    )
    assert max(img.shape[:2]) == 32
    tight = HardSampler(cfg.model_copy(update={"budget_bytes_per_hour": 10}), "dev-1", ob, stats)
    assert (
        tight.consider(
            stream="s", frame=frame, manifest=manifest, result=res, shadow=None, centroids=None
        )
        is None
    )
    assert stats.get("hard_over_budget") == 1


def test_disk_errors_become_clear_cache_full_errors() -> None:
    import errno

    from edge_agent import FetchError
    from edge_agent._fetch import disk_error

    full = disk_error(
        OSError(errno.ENOSPC, "No space left on device", "/data/x.partial"), "writing download"
    )
    assert isinstance(full, CacheFull) and "No space left on device" in str(full)
    assert "/data/x.partial" in str(full) and "disk full or not writable" in str(full)
    ro = disk_error(OSError(errno.EROFS, "Read-only file system", "/data"), "creating staging dir")
    assert isinstance(ro, CacheFull)
    other = disk_error(OSError(errno.EIO, "I/O error"), "x")
    assert isinstance(other, FetchError) and not isinstance(other, CacheFull)
