"""Store announcements -> background prefetch into the cache.

The agent follows ``store/announce/{a}`` for each algorithm its desired state
names. An announcement is trusted only if it verifies against the pinned store
key, has not expired and was not issued before the last one accepted for that
algorithm (TUF-style freeze and replay protection; the last accepted one is kept
in ``data_dir/announcements/`` so that a restart does not forget it). Refusals
are logged, counted (``announcements_rejected.<reason>``) and reported.

For a trusted announcement, the version on the followed channel is downloaded
and verified into the cache by a background thread, unless it is there already.
Nothing is ever loaded or run here: only the desired state changes what runs;
a later desired state naming that version then needs no download. Prefetches
give way to update downloads (:meth:`PackageFetcher.get` ``background``) and
resume from their partial download afterwards.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent._errors import EdgeError, FetchError, Superseded
from edge_agent._fetch import PackageFetcher
from edge_agent._stats import Stats
from edge_agent.protocol import (
    Announcement,
    ArtifactRef,
    MessageInvalid,
    ProtocolError,
    Topics,
    decode,
    verify_announcement,
)

log = logging.getLogger("edge_agent.prefetch")

_SNAKE_RE = re.compile(r"(?<!^)(?=[A-Z])")


def reason_of(e: BaseException) -> str:
    """``SignatureInvalid`` -> ``signature_invalid`` (a metrics label)."""
    return _SNAKE_RE.sub("_", type(e).__name__).lower()


class Prefetcher:
    """Follows announcements of some algorithms and prefetches their followed channel."""

    def __init__(
        self,
        *,
        session: Any,
        fetcher: PackageFetcher,
        public_key: bytes,
        stats: Stats,
        state_dir: Path,
        channel: str,
        enabled: bool,
        retry_s: float,
        on_reject: Callable[[str, Exception], None],
        progress: dict[str, float],
    ) -> None:
        self.session = session
        self.fetcher = fetcher
        self.public_key = public_key
        self.stats = stats
        self.state_dir = Path(state_dir)
        self.channel = channel
        self.enabled = enabled
        self.retry_s = retry_s
        self.on_reject = on_reject
        self.progress = progress
        self.trusted: dict[str, Announcement] = self._load()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._followed: set[str] = set()
        # algorithm -> (version, ref, not before (monotonic)); a newer announcement replaces
        self._queue: dict[str, tuple[str, ArtifactRef, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prefetch", daemon=True)

    # -- persistence of the last trusted announcement per algorithm --------
    def _load(self) -> dict[str, Announcement]:
        out: dict[str, Announcement] = {}
        if not self.state_dir.is_dir():
            return out
        for f in self.state_dir.glob("*.json"):
            try:
                a = decode(f.read_bytes(), Announcement)
            except (OSError, ProtocolError) as e:
                log.warning("ignoring unreadable %s: %s", f, e)
                continue
            out[a.algorithm] = a
        return out

    def _save(self, a: Announcement, raw: bytes) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / f"{a.algorithm}.tmp"
            tmp.write_bytes(raw)
            os.replace(tmp, self.state_dir / f"{a.algorithm}.json")
        except OSError as e:  # a full disk: replay protection lasts until a restart
            log.warning("cannot keep the announcement of %s: %s", a.algorithm, e)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)

    def follow(self, algorithms: set[str]) -> None:
        """Follow exactly these algorithms' announcements (retained: the broker
        sends the current one on subscribe)."""
        with self._lock:
            new = algorithms - self._followed
            gone = self._followed - algorithms
            self._followed = set(algorithms)
            for a in gone:
                self._queue.pop(a, None)
        for a in sorted(gone):
            self.session.unsubscribe(Topics.announce(a))
        for a in sorted(new):
            self.session.subscribe(Topics.announce(a), self.on_message)

    def pending(self) -> set[str]:
        """Artifacts queued for prefetch (their partial downloads are worth keeping)."""
        with self._lock:
            return {ref.sha256 for _, ref, _ in self._queue.values()}

    # -- inbound -----------------------------------------------------------
    def on_message(self, msg: Any) -> None:
        algorithm = msg.topic.rsplit("/", 1)[-1]
        if not msg.payload:  # retained announcement cleared
            return
        with self._lock:
            if algorithm not in self._followed:
                return
            previous = self.trusted.get(algorithm)
        try:
            a = decode(msg.payload, Announcement)
            if a.algorithm != algorithm:
                raise MessageInvalid(
                    f"announcement for {a.algorithm!r} on the topic of {algorithm}"
                )
            verify_announcement(a, self.public_key, previous=previous)
        except ProtocolError as e:
            self.stats.inc(f"announcements_rejected.{reason_of(e)}")
            self.on_reject(f"announcement for {algorithm}", e)  # logs and reports it
            return
        with self._lock:
            self.trusted[algorithm] = a
        self._save(a, bytes(msg.payload))
        self.stats.inc("announcements_accepted")
        self.consider(a)

    def consider(self, a: Announcement) -> bool:
        """Queue the version ``a`` puts on the followed channel unless cached; True if queued."""
        version = a.channels.get(self.channel)
        if not self.enabled or version is None:
            return False
        ref = a.artifacts.get(version)
        if ref is None:
            log.info("announcement of %s names no artifact for %s", a.algorithm, version)
            self.stats.inc("prefetch.no_artifact")
            return False
        if self.fetcher.cache.has(ref.sha256):
            self.stats.inc("prefetch.cached")
            return False
        with self._cv:
            if a.algorithm not in self._followed:
                return False
            self._queue[a.algorithm] = (version, ref, 0.0)
            self._cv.notify_all()
        log.info("prefetching %s %s (channel %s)", a.algorithm, version, self.channel)
        return True

    # -- background downloads ----------------------------------------------
    def _next(self) -> tuple[str, str, ArtifactRef] | None:
        with self._cv:
            while not self._stop.is_set():
                now = time.monotonic()
                ready = [(t, a) for a, (_, _, t) in self._queue.items() if t <= now]
                if ready:
                    _, algorithm = min(ready)
                    version, ref, _ = self._queue.pop(algorithm)
                    return algorithm, version, ref
                waits = [t - now for _, _, t in self._queue.values()]
                self._cv.wait(min(waits) if waits else None)
        return None

    def _later(self, algorithm: str, version: str, ref: ArtifactRef, delay: float) -> None:
        with self._cv:
            if algorithm in self._followed and algorithm not in self._queue:
                self._queue[algorithm] = (version, ref, time.monotonic() + delay)

    def _loop(self) -> None:
        while (item := self._next()) is not None:
            algorithm, version, ref = item
            if self.fetcher.cache.has(ref.sha256):
                continue
            key = f"{algorithm} {version} prefetch"

            def progress(done: int, total: int, key: str = key) -> None:
                self.progress[key] = round(done / total, 4)

            try:
                self.fetcher.get(
                    ref,
                    algorithm=algorithm,
                    version=version,
                    cancel=self._stop.is_set,
                    progress=progress,
                    background=True,
                )
            except Superseded:  # an update download runs: try again after it
                self.stats.inc("prefetch.deferred")
                self._later(algorithm, version, ref, 1.0)
            except FetchError as e:
                if type(e) is FetchError:  # transport trouble: retried
                    self.stats.inc("prefetch.retry")
                    log.warning("prefetch of %s %s: %s (retry)", algorithm, version, e)
                    self._later(algorithm, version, ref, self.retry_s)
                else:
                    self._failed(algorithm, version, e)
            except (EdgeError, ProtocolError, OSError) as e:
                self._failed(algorithm, version, e)
            except Exception as e:  # noqa: BLE001 - never let the thread die
                log.exception("prefetch of %s %s crashed", algorithm, version)
                self._failed(algorithm, version, e)
            else:
                self.stats.inc("prefetch.done")
                log.info("prefetched %s %s into the cache", algorithm, version)
            finally:
                self.progress.pop(key, None)

    def _failed(self, algorithm: str, version: str, e: BaseException) -> None:
        # not retried before the next announcement; an update naming this
        # version fetches (and reports) it itself
        self.stats.inc(f"prefetch.failed_{reason_of(e)}")
        log.error("prefetch of %s %s failed: %s", algorithm, version, e)
