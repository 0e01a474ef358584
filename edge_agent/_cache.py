"""Content-addressed local cache of verified packages.

``cache/{archive sha256}/`` holds an extracted, verified package. An index
(``cache/index.json``) records each entry's size and last use. Room is made by
evicting the least recently used entries that are not pinned (in use or being
prepared); if that is not enough, :class:`CacheFull` says how much is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from edge_agent._errors import CacheFull


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._pins: dict[str, int] = {}
        self._index_path = self.root / "index.json"
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, float]] = self._load_index()

    # -- index -------------------------------------------------------------
    def _load_index(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self._index_path.read_text())
            index = {k: v for k, v in data.items() if (self.root / k).is_dir()}
        except (OSError, ValueError, AttributeError):
            index = {}
        # entries present on disk but missing from the index (crash before save)
        for d in self.root.iterdir():
            if d.is_dir() and len(d.name) == 64 and d.name not in index:
                index[d.name] = {"size": dir_size(d), "last_used": d.stat().st_mtime}
        return index

    def _save(self) -> None:
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._index))
        os.replace(tmp, self._index_path)

    # -- queries -----------------------------------------------------------
    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._index and self.path(sha256).is_dir()

    def used_bytes(self) -> int:
        with self._lock:
            return int(sum(e["size"] for e in self._index.values()))

    def entries(self) -> list[str]:
        with self._lock:
            return list(self._index)

    # -- pins --------------------------------------------------------------
    def pin(self, sha256: str) -> None:
        with self._lock:
            self._pins[sha256] = self._pins.get(sha256, 0) + 1

    def unpin(self, sha256: str) -> None:
        with self._lock:
            n = self._pins.get(sha256, 0) - 1
            if n <= 0:
                self._pins.pop(sha256, None)
            else:
                self._pins[sha256] = n

    def pinned(self) -> set[str]:
        with self._lock:
            return set(self._pins)

    # -- mutation ----------------------------------------------------------
    def touch(self, sha256: str) -> None:
        with self._lock:
            if sha256 in self._index:
                self._index[sha256]["last_used"] = time.time()
                self._save()

    def make_room(self, needed: int, *, for_what: str) -> list[str]:
        """Evict LRU unpinned entries until ``needed`` more bytes fit; returns evicted."""
        with self._lock:
            if needed > self.max_bytes:
                raise CacheFull(
                    f"{for_what} needs {needed} bytes, more than the cache limit "
                    f"({self.max_bytes} bytes, cache_max_bytes)"
                )
            held = sum(e["size"] for k, e in self._index.items() if k in self._pins)
            if held + needed > self.max_bytes:
                # fail before evicting anything: nothing is lost for nothing
                raise CacheFull(
                    f"{for_what} needs {needed} bytes; cache limit {self.max_bytes}, "
                    f"{int(held)} held by models in use (cache_max_bytes)"
                )
            evicted: list[str] = []
            victims = sorted(
                (k for k in self._index if k not in self._pins),
                key=lambda k: self._index[k]["last_used"],
            )
            while self.used_bytes() + needed > self.max_bytes and victims:
                victim = victims.pop(0)
                self._remove(victim)
                evicted.append(victim)
            return evicted

    def add(self, sha256: str, staged_dir: Path) -> Path:
        """Move a verified package directory into the cache (atomic rename)."""
        with self._lock:
            dest = self.path(sha256)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staged_dir, dest)
            self._index[sha256] = {"size": dir_size(dest), "last_used": time.time()}
            self._save()
            return dest

    def remove(self, sha256: str) -> None:
        with self._lock:
            if sha256 in self._pins:
                raise CacheFull(f"{sha256[:12]} is in use and cannot be evicted")
            self._remove(sha256)

    def _remove(self, sha256: str) -> None:
        shutil.rmtree(self.path(sha256), ignore_errors=True)
        self._index.pop(sha256, None)
        self._save()
