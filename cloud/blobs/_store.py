"""The blob store protocol and its file-system backend."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from cloud.errors import CitybrainError, InvalidInput, NotFound

_CHUNK = 1 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class InvalidBlobId(InvalidInput):
    """The id is not a lowercase 64-hex-digit sha256."""


class BlobNotFound(NotFound):
    """No blob is stored under that id."""


class CorruptBlob(CitybrainError):
    """The stored bytes do not hash to the blob's id (disk or manual damage)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_id(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
        raise InvalidBlobId(f"not a sha256 blob id: {sha256!r}", field="sha256")
    return sha256


@runtime_checkable
class BlobStore(Protocol):
    """What the catalog, the store and the flywheel need from blob storage."""

    def put(self, data: bytes | Path, *, sha256: str | None = None) -> str:
        """Store bytes or a file's content; return its sha256. Idempotent."""
        ...

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, hash-verified."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """A binary reader; raises ``CorruptBlob`` at EOF if the hash is wrong."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...


class _VerifyingReader(io.RawIOBase):
    """Reads a blob file and checks its sha256 once the end is reached."""

    def __init__(self, path: Path, sha256: str) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._h = hashlib.sha256()
        self._sha = sha256
        self._path = path
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = self._f.readinto(b)
        if n:
            self._h.update(memoryview(b)[:n])
        elif not self._checked:
            self._checked = True
            if self._h.hexdigest() != self._sha:
                raise CorruptBlob(f"blob {self._sha} is corrupt: {self._path} hashes differently")
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


class FileBlobStore:
    """Blobs as files ``root/ab/cd/<sha256>``."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        check_id(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None

    def put(self, data: bytes | Path, *, sha256: str | None = None) -> str:
        """Store ``data`` (bytes, or the content of a file path).

        ``sha256`` may be given when the caller already hashed the bytes; it is
        checked all the same. Writing an existing blob is a no-op.
        """
        if isinstance(data, bytes | bytearray | memoryview):
            digest = sha256_bytes(bytes(data))
            if sha256 is not None and sha256 != digest:
                raise InvalidInput(f"blob bytes hashes to {digest}, not {sha256}", field="sha256")
            target = self.path(digest)
            if target.exists():
                return digest
            self._write(target, [bytes(data)])
            return digest
        src = Path(data)
        if not src.is_file():
            raise InvalidInput(f"not a file: {src}", field="path")
        if sha256 is not None and self.exists(check_id(sha256)):
            return sha256
        # stream: hash while copying into the temporary file of the shard dir
        # of the expected id (the final shard is known only once hashed)
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".put-")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
            digest = h.hexdigest()
            if sha256 is not None and sha256 != digest:
                raise InvalidInput(f"{src} hashes to {digest}, not {sha256}", field="sha256")
            target = self.path(digest)
            if target.exists():
                return digest
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)  # same file system: root/tmp and root/ab/cd
            tmp = ""
            if self.fsync:
                _fsync_dir(target.parent)
            return digest
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _write(self, target: Path, chunks: list[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as out:
                for c in chunks:
                    out.write(c)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
            os.replace(tmp, target)
            tmp = ""
            if self.fsync:
                _fsync_dir(target.parent)
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def get(self, sha256: str) -> bytes:
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None
        if sha256_bytes(data) != sha256:
            raise CorruptBlob(f"blob {sha256} is corrupt: {p} hashes differently")
        return data

    def open(self, sha256: str) -> BinaryIO:
        p = self.path(sha256)
        if not p.is_file():
            raise BlobNotFound(f"no blob {sha256}")
        return io.BufferedReader(_VerifyingReader(p, sha256))  # type: ignore[return-value]

    def verify(self, sha256: str) -> None:
        """Raise ``CorruptBlob``/``BlobNotFound`` unless the blob is intact."""
        p = self.path(sha256)
        if not p.is_file():
            raise BlobNotFound(f"no blob {sha256}")
        if sha256_file(p) != sha256:
            raise CorruptBlob(f"blob {sha256} is corrupt: {p} hashes differently")

    def iter_ids(self) -> Iterator[str]:
        """Every stored blob id (for garbage collection and audits)."""
        for p in self.root.glob("??/??/*"):
            if _SHA_RE.match(p.name):
                yield p.name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
