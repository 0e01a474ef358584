"""Content-addressed blob store: atomic, idempotent writes; hash-verified reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cloud.blobs import BlobNotFound, BlobStore, CorruptBlob, FileBlobStore, InvalidBlobId
from cloud.errors import InvalidInput, NotFound


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def test_put_bytes_returns_sha_and_shards_path(store: FileBlobStore) -> None:
    data = b"hello city"
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha) == store.root / sha[:2] / sha[2:4] / sha
    assert store.path(sha).read_bytes() == data
    assert store.exists(sha) and store.size(sha) == len(data)
    assert store.get(sha) == data
    assert isinstance(store, BlobStore)


def test_put_is_idempotent_and_leaves_no_temp_files(store: FileBlobStore) -> None:
    a = store.put(b"x" * 1000)
    mtime = store.path(a).stat().st_mtime_ns
    assert store.put(b"x" * 1000) == a
    assert store.path(a).stat().st_mtime_ns == mtime  # not rewritten
    leftovers = [p for p in store.root.rglob(".put-*")]
    assert leftovers == []
    assert list(store.iter_ids()) == [a]


def test_put_file_streams_and_checks_expected_hash(store: FileBlobStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 17))
    sha = store.put(src)
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.get(sha) == src.read_bytes()
    with pytest.raises(InvalidInput, match="hashes to"):
        store.put(b"abc", sha256="0" * 64)
    other = tmp_path / "o.bin"
    other.write_bytes(b"zzz")
    with pytest.raises(InvalidInput, match="hashes to"):
        store.put(other, sha256="1" * 64)
    assert not store.exists("1" * 64)
    assert list((store.root / "tmp").iterdir()) == []


def test_corruption_is_detected_on_get_open_and_verify(store: FileBlobStore) -> None:
    sha = store.put(b"precious pixels" * 100)
    p = store.path(sha)
    p.chmod(0o644)
    p.write_bytes(b"precious pixelz" * 100)
    with pytest.raises(CorruptBlob, match=sha):
        store.get(sha)
    with pytest.raises(CorruptBlob):
        store.verify(sha)
    with store.open(sha) as f, pytest.raises(CorruptBlob):
        f.read()


def test_open_reads_intact_blob_in_chunks(store: FileBlobStore) -> None:
    data = os.urandom(200_000)
    sha = store.put(data)
    with store.open(sha) as f:
        parts = []
        while chunk := f.read(65536):
            parts.append(chunk)
    assert b"".join(parts) == data


def test_missing_and_malformed_ids(store: FileBlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get("a" * 64)
    assert issubclass(BlobNotFound, NotFound)
    with pytest.raises(BlobNotFound):
        store.open("b" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "abc", "g" * 64):
        with pytest.raises(InvalidBlobId):
            store.path(bad)
