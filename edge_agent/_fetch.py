"""Artifact fetch and verify: MQTT chunks (primary) or HTTP Range, into staging,
then whole-archive size + sha256, safe extraction, signature and per-file hash
verification against the pinned key, then into the cache.

Progress survives a restart: ``staging/{sha}.partial`` holds the bytes,
``staging/{sha}.json`` the offset up to which every chunk was verified. A
restarted agent truncates the partial file to that offset and goes on from there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent._cache import ArtifactCache
from edge_agent._errors import ArtifactMismatch, CacheFull, FetchError, Superseded
from edge_agent._stats import Stats
from edge_agent.protocol import (
    ArtifactRef,
    ChunkReplyHeader,
    ChunkRequest,
    Manifest,
    PackageInvalid,
    ProtocolError,
    Topics,
    encode,
    extract_package_archive,
    sha256_file,
    verify_package_dir,
)

log = logging.getLogger("edge_agent.fetch")

#: a chunk download records its verified offset after this many bytes, or seconds
_SAVE_BYTES = 4 * 1024 * 1024
_SAVE_S = 1.0

Cancel = Callable[[], bool]
Progress = Callable[[int, int], None]


def disk_error(e: OSError, what: str) -> CacheFull | FetchError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return CacheFull(f"{what}: {e.strerror} ({e.filename or ''}); disk full or not writable")
    return FetchError(f"{what}: {e}")


class _Partial:
    """A resumable partial download: bytes file + verified-offset JSON."""

    def __init__(self, staging: Path, ref: ArtifactRef) -> None:
        self.ref = ref
        self.data = staging / f"{ref.sha256}.partial"
        self.state = staging / f"{ref.sha256}.json"

    def load(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state.read_text())
            if st.get("sha256") != self.ref.sha256 or st.get("size") != self.ref.size:
                raise ValueError("state for another artifact")
            verified = int(st.get("verified", 0))
            if not self.data.exists() or self.data.stat().st_size < verified:
                raise ValueError("partial file shorter than its state")
            return {"verified": verified, "etag": st.get("etag")}
        except (OSError, ValueError, TypeError):
            return {"verified": 0, "etag": None}

    def save(self, verified: int, etag: str | None = None) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "sha256": self.ref.sha256,
                    "size": self.ref.size,
                    "verified": verified,
                    "etag": etag,
                }
            )
        )
        os.replace(tmp, self.state)

    def open_at(self, verified: int) -> Any:
        f = open(self.data, "r+b" if self.data.exists() else "w+b")  # noqa: SIM115
        f.truncate(verified)
        f.seek(verified)
        return f

    def discard(self) -> None:
        for p in (self.data, self.state):
            p.unlink(missing_ok=True)


class ChunkFetcher:
    """Requests chunks on ``store/chunk/req`` and collects replies on ``dev/{d}/chunk``."""

    def __init__(
        self,
        session: Any,
        stats: Stats,
        *,
        chunk_size: int,
        window: int,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.session = session
        self.device = session.device
        self.stats = stats
        self.chunk_size = chunk_size
        self.window = window
        self.timeout_s = timeout_s
        self.retries = retries
        self._cv = threading.Condition()
        self._replies: dict[bytes, tuple[ChunkReplyHeader | None, bytes, str | None]] = {}
        self._waiting: set[bytes] = set()
        session.subscribe(Topics.chunk(self.device), self._on_reply)

    # -- replies -----------------------------------------------------------
    def _on_reply(self, msg: Any) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        if not corr:
            self.stats.inc("rejected")
            self.stats.inc("chunk_uncorrelated")
            return
        corr = bytes(corr)
        header, err = None, None
        try:
            header = parse_chunk_header(getattr(props, "UserProperty", None) or [])
        except ProtocolError as e:
            err = f"malformed chunk reply header: {e}"
            self.stats.inc("rejected")
        with self._cv:
            if corr not in self._waiting:
                self.stats.inc("chunk_late")
                return
            self._waiting.discard(corr)
            self._replies[corr] = (header, bytes(msg.payload), err)
            self._cv.notify_all()

    def _request(self, sha256: str, offset: int, length: int) -> bytes:
        corr = os.urandom(16)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = Topics.chunk(self.device)
        props.CorrelationData = corr
        req = ChunkRequest(device=self.device, sha256=sha256, offset=offset, length=length)
        with self._cv:
            self._waiting.add(corr)
        self.session.publish(Topics.CHUNK_REQUEST, encode(req), qos=1, properties=props)
        self.stats.inc("chunk_requests")
        return corr

    # -- download ----------------------------------------------------------
    def fetch(self, ref: ArtifactRef, part: _Partial, cancel: Cancel, progress: Progress) -> None:
        verified = part.load()["verified"]
        if verified:
            self.stats.inc("fetch_resumed")
            log.info("%s: resuming %s at %d/%d", self.device, ref.sha256[:12], verified, ref.size)
        f = part.open_at(verified)
        pos = {"verified": verified, "saved": verified}
        try:
            self._run(ref, part, f, pos, cancel, progress)
        finally:
            try:
                if pos["verified"] > pos["saved"]:  # keep what was verified for the next try
                    self._persist(part, f, pos["verified"])
            except OSError as e:
                log.warning("%s: could not record download progress: %s", self.device, e)
            f.close()
            with self._cv:
                self._waiting.clear()

    @staticmethod
    def _persist(part: _Partial, f: Any, verified: int) -> None:
        f.flush()
        os.fsync(f.fileno())
        part.save(verified)

    def _run(
        self,
        ref: ArtifactRef,
        part: _Partial,
        f: Any,
        pos: dict[str, int],
        cancel: Cancel,
        progress: Progress,
    ) -> None:
        verified = pos["verified"]
        next_off = verified
        last_save = time.monotonic()
        inflight: dict[bytes, tuple[int, int, float]] = {}  # corr -> (offset, length, sent)
        done: dict[int, bytes] = {}  # offset -> verified bytes not yet contiguous
        tries: dict[int, int] = {}

        def send(off: int) -> None:
            length = min(self.chunk_size, ref.size - off)
            inflight[self._request(ref.sha256, off, length)] = (off, length, time.monotonic())

        def retry(off: int, why: str) -> None:
            tries[off] = tries.get(off, 0) + 1
            if tries[off] > self.retries:
                raise FetchError(
                    f"artifact {ref.sha256[:12]}: chunk at offset {off} failed "
                    f"{tries[off]} times ({why})"
                )
            send(off)

        while verified < ref.size:
            if cancel():
                raise Superseded("a newer desired revision arrived during the download")
            while len(inflight) < self.window and next_off < ref.size:
                send(next_off)
                next_off += min(self.chunk_size, ref.size - next_off)
            with self._cv:
                self._cv.wait_for(lambda: any(c in self._replies for c in inflight), timeout=0.2)
                arrived = [(c, self._replies.pop(c)) for c in list(inflight) if c in self._replies]
            now = time.monotonic()
            for corr, (header, payload, err) in arrived:
                off, length, _ = inflight.pop(corr)
                self.stats.inc("bytes_fetched", len(payload))
                if err or header is None:
                    retry(off, err or "no header")
                    continue
                if header.status == "not_found":
                    raise FetchError(
                        f"artifact {ref.sha256[:12]} not found in the store: {header.error or ''}"
                    )
                if header.status != "ok":
                    raise FetchError(f"store refused chunk request: {header.error}")
                if header.total != ref.size:
                    raise ArtifactMismatch(
                        f"artifact {ref.sha256[:12]}: store says {header.total} bytes, "
                        f"desired state says {ref.size}"
                    )
                digest = hashlib.sha256(payload).hexdigest()
                if (
                    header.sha256 != ref.sha256
                    or header.offset != off
                    or len(payload) != length
                    or header.length != length
                    or (header.chunk_sha256 is not None and header.chunk_sha256 != digest)
                ):
                    self.stats.inc("chunk_corrupt")
                    retry(off, "chunk failed its sha256/length check")
                    continue
                done[off] = payload
            for corr, (off, _length, sent) in list(inflight.items()):
                if now - sent > self.timeout_s:
                    del inflight[corr]
                    with self._cv:
                        self._waiting.discard(corr)
                    self.stats.inc("chunk_timeouts")
                    retry(off, f"no reply within {self.timeout_s}s")
            while verified in done:
                data = done.pop(verified)
                try:
                    f.write(data)
                except OSError as e:
                    raise disk_error(e, "writing download") from None
                verified += len(data)
                pos["verified"] = verified
            # progress reaches the disk (fsync + state) every _SAVE_BYTES, after
            # _SAVE_S without one, and at the end: not once per chunk
            if verified > pos["saved"] and (
                verified - pos["saved"] >= _SAVE_BYTES
                or now - last_save >= _SAVE_S
                or verified >= ref.size
            ):
                self._persist(part, f, verified)
                pos["saved"], last_save = verified, now
                progress(verified, ref.size)


def parse_chunk_header(user_props: list[tuple[str, str]]) -> ChunkReplyHeader:
    """The reply header carried as MQTT v5 user properties (one per field)."""
    return ChunkReplyHeader.from_user_properties(list(user_props))


class HttpFetcher:
    """``GET {base}/api/v1/store/artifacts/{sha}`` with Range + If-Range resume."""

    def __init__(self, base_url: str, stats: Stats, *, timeout_s: float, block: int = 1 << 16):
        self.base_url = base_url.rstrip("/")
        self.stats = stats
        self.timeout_s = timeout_s
        self.block = block

    def fetch(self, ref: ArtifactRef, part: _Partial, cancel: Cancel, progress: Progress) -> None:
        st = part.load()
        have, etag = st["verified"], st["etag"]
        url = ref.url or f"{self.base_url}/api/v1/store/artifacts/{ref.sha256}"
        req = urllib.request.Request(url)
        if have:
            req.add_header("Range", f"bytes={have}-")
            if etag:
                req.add_header("If-Range", etag)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout_s)  # noqa: S310
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FetchError(f"artifact {ref.sha256[:12]} not found in the store") from None
            if e.code == 416 and have == ref.size:
                return
            raise FetchError(f"artifact {ref.sha256[:12]}: HTTP {e.code} from {url}") from None
        except (urllib.error.URLError, OSError) as e:
            raise FetchError(f"artifact {ref.sha256[:12]}: cannot reach {url}: {e}") from None
        with resp:
            if resp.status == 200:
                if have:
                    self.stats.inc("fetch_restarted")
                have = 0
            elif resp.status == 206:
                self.stats.inc("fetch_resumed")
            else:
                raise FetchError(f"artifact {ref.sha256[:12]}: unexpected HTTP {resp.status}")
            etag = resp.headers.get("ETag") or etag
            f = part.open_at(have)
            try:
                last_save = have
                while have < ref.size:
                    if cancel():
                        raise Superseded("a newer desired revision arrived during the download")
                    try:
                        data = resp.read(min(self.block, ref.size - have))
                    except OSError as e:
                        raise FetchError(f"artifact {ref.sha256[:12]}: read failed: {e}") from None
                    if not data:
                        break
                    try:
                        f.write(data)
                    except OSError as e:
                        raise disk_error(e, "writing download") from None
                    self.stats.inc("bytes_fetched", len(data))
                    have += len(data)
                    if have - last_save >= 4 * self.block:
                        f.flush()
                        os.fsync(f.fileno())
                        part.save(have, etag)
                        last_save = have
                        progress(have, ref.size)
                if have == ref.size and resp.read(1):
                    raise ArtifactMismatch(f"artifact {ref.sha256[:12]}: larger than {ref.size}")
            finally:
                # what reached the disk is kept for the next attempt (Range resume);
                # the whole-archive sha256 decides whether it is any good
                with contextlib.suppress(OSError):
                    f.flush()
                    os.fsync(f.fileno())
                    part.save(have, etag)
                f.close()
        if have != ref.size:
            raise FetchError(f"artifact {ref.sha256[:12]}: connection ended at {have}/{ref.size}")


class PackageFetcher:
    """Gets a verified package directory for an ArtifactRef, via the cache."""

    def __init__(
        self,
        data_dir: Path,
        cache: ArtifactCache,
        transport: ChunkFetcher | HttpFetcher,
        public_key: bytes,
        stats: Stats,
    ) -> None:
        self.staging = Path(data_dir) / "staging"
        self.cache = cache
        self.transport = transport
        self.public_key = public_key
        self.stats = stats
        self._one = threading.Lock()  # one get at a time: transports are not re-entrant
        self._state = threading.Lock()
        self._foreground = 0  # foreground gets waiting for or holding ``_one``
        self._active: set[str] = set()  # artifacts being fetched (their staging is kept)

    def get(
        self,
        ref: ArtifactRef,
        *,
        algorithm: str,
        version: str,
        cancel: Cancel = lambda: False,
        progress: Progress = lambda done, total: None,
        background: bool = False,
    ) -> tuple[Path, Manifest]:
        """A cached, verified package; raises FetchError/PackageInvalid/CacheFull/Superseded.

        A ``background`` get (prefetch) gives way: it raises :class:`Superseded`
        at once if another get runs, and between chunks as soon as a foreground
        get (an update) waits; what it downloaded so far is resumed later."""
        if background:
            if not self._one.acquire(blocking=False):
                raise Superseded("another download is running")
            user_cancel = cancel

            def cancel() -> bool:
                return self._foreground > 0 or user_cancel()
        else:
            with self._state:
                self._foreground += 1
            try:
                self._one.acquire()
            finally:
                with self._state:
                    self._foreground -= 1
        with self._state:
            self._active.add(ref.sha256)
        try:
            return self._get(ref, algorithm, version, cancel, progress)
        finally:
            with self._state:
                self._active.discard(ref.sha256)
            self._one.release()

    def _get(
        self, ref: ArtifactRef, algorithm: str, version: str, cancel: Cancel, progress: Progress
    ) -> tuple[Path, Manifest]:
        what = f"{algorithm} {version}"
        if self.cache.has(ref.sha256):
            path = self.cache.path(ref.sha256)
            try:
                manifest = self._verify(path, algorithm, version)
                self.cache.touch(ref.sha256)
                self.stats.inc("cache_hits")
                return path, manifest
            except PackageInvalid as e:
                log.warning("cached %s failed verification (%s); fetching again", what, e)
                self.stats.inc("cache_corrupt")
                self.cache.remove(ref.sha256)
        # room for the archive + its extraction
        self.cache.make_room(2 * ref.size, for_what=f"{what} ({ref.sha256[:12]})")
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, "creating staging dir") from None
        part = _Partial(self.staging, ref)
        try:
            self.transport.fetch(ref, part, cancel, progress)
        except OSError as e:
            raise disk_error(e, f"downloading {what}") from None
        size = part.data.stat().st_size
        digest = sha256_file(part.data)
        if size != ref.size or digest != ref.sha256:
            part.discard()
            self.stats.inc("artifact_mismatch")
            raise ArtifactMismatch(
                f"{what}: archive sha256/size mismatch (got {digest[:12]}/{size}, "
                f"expected {ref.sha256[:12]}/{ref.size}); discarded"
            )
        out = self.staging / f"{ref.sha256}.x"
        shutil.rmtree(out, ignore_errors=True)
        try:
            extract_package_archive(part.data, out)
            manifest = self._verify(out, algorithm, version)
        except PackageInvalid:
            shutil.rmtree(out, ignore_errors=True)
            part.discard()
            self.stats.inc("package_invalid")
            raise
        except OSError as e:
            shutil.rmtree(out, ignore_errors=True)
            raise disk_error(e, f"extracting {what}") from None
        part.discard()
        path = self.cache.add(ref.sha256, out)
        self.stats.inc("artifacts_fetched")
        return path, manifest

    def clean_staging(self, keep: set[str]) -> int:
        """Delete partial downloads of artifacts no longer wanted (nor being
        fetched); returns how many."""
        removed = 0
        if not self.staging.is_dir():
            return 0
        with self._state:  # no get registers an artifact meanwhile
            for p in self.staging.iterdir():
                sha = p.name.split(".", 1)[0]
                if sha in keep or sha in self._active:
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed += 1
        return removed

    def _verify(self, path: Path, algorithm: str, version: str) -> Manifest:
        manifest = verify_package_dir(path, self.public_key)
        if manifest.id != algorithm or manifest.version != version:
            raise PackageInvalid(
                f"package is {manifest.id} {manifest.version}, assignment wants "
                f"{algorithm} {version}"
            )
        return manifest
