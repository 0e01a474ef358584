"""The store: content-addressed archive blobs plus a SQLite index (WAL) of
algorithms, immutable versions, channels, rollouts and an append-only log of
every transition."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.protocol import (
    Announcement,
    ArtifactRef,
    Manifest,
    PackageInvalid,
    extract_package_archive,
    semver_key,
    utcnow,
    verify_package_dir,
)

from . import _onnx
from ._errors import (
    DowngradeRefused,
    NotFound,
    PackageRejected,
    RolloutConflict,
    StoreError,
    VersionExists,
)
from ._keys import make_announcement, public_key_raw
from ._rollout import (
    ACTIVE_STATES,
    DeviceReport,
    GroupProgress,
    Rollout,
    RolloutState,
    Transition,
    check_transition,
    resolve_groups,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS algorithms (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    algorithm TEXT NOT NULL REFERENCES algorithms(id),
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    archive_sha256 TEXT NOT NULL,
    archive_size INTEGER NOT NULL,
    signature TEXT NOT NULL,
    published_at TEXT NOT NULL,
    PRIMARY KEY (algorithm, version)
);
CREATE INDEX IF NOT EXISTS versions_by_sha ON versions(archive_sha256);
CREATE TRIGGER IF NOT EXISTS versions_immutable BEFORE UPDATE ON versions
BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS versions_undeletable BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END;
CREATE TABLE IF NOT EXISTS channels (
    algorithm TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (algorithm, channel),
    FOREIGN KEY (algorithm, version) REFERENCES versions(algorithm, version)
);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    algorithm TEXT NOT NULL,
    version TEXT NOT NULL,
    channel TEXT NOT NULL,
    from_version TEXT,
    groups TEXT NOT NULL,
    current_group INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    success_gate REAL NOT NULL,
    error_gate REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    FOREIGN KEY (algorithm, version) REFERENCES versions(algorithm, version)
);
CREATE TABLE IF NOT EXISTS rollout_reports (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    version TEXT NOT NULL,
    healthy INTEGER NOT NULL,
    error TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device)
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    from_value TEXT,
    to_value TEXT,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS transitions_append_only_u BEFORE UPDATE ON transitions
BEGIN SELECT RAISE(ABORT, 'the transitions log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS transitions_append_only_d BEFORE DELETE ON transitions
BEGIN SELECT RAISE(ABORT, 'the transitions log is append-only'); END;
"""

Announcer = Callable[[Announcement], None]


@dataclass(frozen=True)
class VersionInfo:
    """One published version as the index knows it."""

    algorithm: str
    version: str
    manifest: Manifest
    sha256: str
    size: int
    signature: str
    published_at: datetime
    channels: tuple[str, ...] = ()

    def artifact_ref(self, base_url: str | None = None) -> ArtifactRef:
        url = f"{base_url.rstrip('/')}/{self.sha256}" if base_url else None
        return ArtifactRef(sha256=self.sha256, size=self.size, signature=self.signature, url=url)


def _now() -> str:
    return utcnow().isoformat()


def _check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        raise StoreError(
            f"channel {channel!r}: use 1-64 letters, digits, '_', '.', '-'", field="channel"
        )
    return channel


def _newer(a: str, b: str) -> bool:
    return semver_key(a) > semver_key(b)


def verify_archive(
    archive: Path | str, public_key: bytes, *, workdir: Path | None = None
) -> Manifest:
    """Verify a package archive completely: safe members, signature by
    ``public_key``, every file's sha256 and size (no unlisted file), full
    ``onnx.checker`` check, external data inside the package, and the golden
    check with ONNX Runtime CPU. Returns the manifest; raises
    :class:`PackageRejected` naming what is wrong."""
    archive = Path(archive)
    if not archive.is_file():
        raise NotFound(f"{archive}: no such archive", field="archive")
    with tempfile.TemporaryDirectory(prefix="verify-", dir=workdir) as tmp:
        root = Path(tmp) / "pkg"
        try:
            extract_package_archive(archive, root)
            manifest = verify_package_dir(root, public_key)
        except PackageInvalid as e:
            raise PackageRejected(f"{archive.name}: {e}") from e
        model = root / manifest.model
        _onnx.check_model(model, root)
        _onnx.graph_input(model, manifest.input.name)
        try:
            x = np.load(root / manifest.golden.input, allow_pickle=False)
            y = np.load(root / manifest.golden.output, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PackageRejected(f"{archive.name}: golden files unreadable: {e}") from None
        _onnx.golden_check(
            model, manifest.input.name, x, y, manifest.golden.atol, manifest.golden.rtol
        )
    return manifest


class AlgorithmStore:
    """Published algorithm packages, their channels and rollouts under ``root``.

    ``public_key`` (raw ed25519) is the key every package must be signed with;
    with ``private_key`` the store also signs announcements, which
    ``announcer`` (e.g. :class:`MqttAnnouncer`) sends on every channel change.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        public_key: bytes | None = None,
        private_key: Ed25519PrivateKey | None = None,
        announcer: Announcer | None = None,
        announce_ttl: timedelta = timedelta(days=1),
        artifact_base_url: str | None = None,
    ) -> None:
        self.root = Path(root)
        if public_key is None and private_key is not None:
            public_key = public_key_raw(private_key)
        if public_key is not None and private_key is not None:
            if public_key_raw(private_key) != public_key:
                raise StoreError("public_key does not belong to private_key", field="key")
        self.public_key = public_key
        self.private_key = private_key
        self.announcer = announcer
        self.announce_ttl = announce_ttl
        self.artifact_base_url = artifact_base_url
        self.last_announce_error: str | None = None
        self._published_cache: dict[str, tuple[Path, int]] = {}
        self._lock = threading.Lock()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    # -- plumbing ---------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=FULL")
        return con

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @staticmethod
    def _log(
        con: sqlite3.Connection,
        algorithm: str,
        kind: str,
        subject: str,
        from_value: str | None,
        to_value: str | None,
        reason: str,
    ) -> None:
        con.execute(
            "INSERT INTO transitions (at, algorithm, kind, subject, from_value, to_value, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_now(), algorithm, kind, subject, from_value, to_value, reason),
        )

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    # -- publish ----------------------------------------------------------------

    def publish(
        self, archive: Path | str, *, channel: str | None = None, reason: str = ""
    ) -> VersionInfo:
        """Verify a package archive and make its version visible atomically.

        The blob is written (and fsynced) first, then one index transaction
        records the version (and, if ``channel`` is given, points it there).
        A crash in between leaves an unreferenced blob and no visible version.
        """
        if self.public_key is None:
            raise StoreError("the store has no public key to verify packages with", field="key")
        if channel is not None:
            _check_channel(channel)
        archive = Path(archive)
        if not archive.is_file():
            raise NotFound(f"{archive}: no such archive", field="archive")
        tmp = Path(tempfile.mkdtemp(prefix="publish-", dir=self.root / "tmp"))
        try:
            staged = tmp / "archive"
            h = hashlib.sha256()
            with open(archive, "rb") as src, open(staged, "wb") as dst:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            sha, size = h.hexdigest(), staged.stat().st_size
            manifest = verify_archive(staged, self.public_key, workdir=tmp)
            if self._version_row(manifest.id, manifest.version) is not None:
                raise VersionExists(
                    f"{manifest.id} {manifest.version} is already published; versions are "
                    "immutable (publish a new version number)",
                    field="version",
                )
            self._write_blob(staged, sha)
            self._index_version(manifest, sha, size, channel, reason)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if channel is not None:
            self.announce(manifest.id)
        return self.version(manifest.id, manifest.version)

    def _write_blob(self, staged: Path, sha: str) -> None:
        dest = self.blob_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and dest.stat().st_size == staged.stat().st_size:
            return  # content-addressed: same bytes already there (e.g. an orphan from a crash)
        os.replace(staged, dest)
        dfd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _index_version(
        self, manifest: Manifest, sha: str, size: int, channel: str | None, reason: str
    ) -> None:
        assert manifest.signature is not None
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO algorithms (id, created_at) VALUES (?, ?)",
                (manifest.id, _now()),
            )
            try:
                con.execute(
                    "INSERT INTO versions (algorithm, version, manifest, archive_sha256,"
                    " archive_size, signature, published_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        manifest.id,
                        manifest.version,
                        manifest.model_dump_json(by_alias=True),
                        sha,
                        size,
                        manifest.signature.value,
                        _now(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise VersionExists(
                    f"{manifest.id} {manifest.version} is already published; versions are "
                    "immutable",
                    field="version",
                ) from None
            self._log(
                con, manifest.id, "publish", manifest.version, None, sha, reason or "published"
            )
            if channel is not None:
                self._move_channel(
                    con, manifest.id, channel, manifest.version, "promote", reason or "published"
                )

    # -- queries ----------------------------------------------------------------

    def _version_row(self, algorithm: str, version: str) -> sqlite3.Row | None:
        with self._read() as con:
            return con.execute(
                "SELECT * FROM versions WHERE algorithm=? AND version=?", (algorithm, version)
            ).fetchone()

    def _channels_of(self, con: sqlite3.Connection, algorithm: str) -> dict[str, str]:
        rows = con.execute(
            "SELECT channel, version FROM channels WHERE algorithm=? ORDER BY channel",
            (algorithm,),
        ).fetchall()
        return {r["channel"]: r["version"] for r in rows}

    @staticmethod
    def _info(row: sqlite3.Row, channels: Mapping[str, str]) -> VersionInfo:
        return VersionInfo(
            algorithm=row["algorithm"],
            version=row["version"],
            manifest=Manifest.model_validate_json(row["manifest"]),
            sha256=row["archive_sha256"],
            size=row["archive_size"],
            signature=row["signature"],
            published_at=datetime.fromisoformat(row["published_at"]),
            channels=tuple(sorted(c for c, v in channels.items() if v == row["version"])),
        )

    def algorithms(self) -> list[dict[str, Any]]:
        """Every algorithm with its versions (newest first) and channels."""
        with self._read() as con:
            ids = [r["id"] for r in con.execute("SELECT id FROM algorithms ORDER BY id")]
            out = []
            for a in ids:
                versions = [
                    r["version"]
                    for r in con.execute("SELECT version FROM versions WHERE algorithm=?", (a,))
                ]
                versions.sort(key=semver_key, reverse=True)
                out.append(
                    {
                        "id": a,
                        "versions": versions,
                        "latest": versions[0] if versions else None,
                        "channels": self._channels_of(con, a),
                    }
                )
        return out

    def versions(self, algorithm: str) -> list[VersionInfo]:
        """Published versions of ``algorithm``, newest first."""
        with self._read() as con:
            if con.execute("SELECT 1 FROM algorithms WHERE id=?", (algorithm,)).fetchone() is None:
                raise NotFound(f"no algorithm {algorithm!r} in the store", field="algorithm")
            channels = self._channels_of(con, algorithm)
            rows = con.execute("SELECT * FROM versions WHERE algorithm=?", (algorithm,)).fetchall()
        infos = [self._info(r, channels) for r in rows]
        infos.sort(key=lambda i: semver_key(i.version), reverse=True)
        return infos

    def version(self, algorithm: str, version: str) -> VersionInfo:
        with self._read() as con:
            row = con.execute(
                "SELECT * FROM versions WHERE algorithm=? AND version=?", (algorithm, version)
            ).fetchone()
            if row is None:
                raise NotFound(f"{algorithm} {version} is not published", field="version")
            return self._info(row, self._channels_of(con, algorithm))

    def channels(self, algorithm: str) -> dict[str, str]:
        with self._read() as con:
            return self._channels_of(con, algorithm)

    def artifact_ref(self, algorithm: str, version: str) -> ArtifactRef:
        """The :class:`ArtifactRef` a desired state points devices at."""
        return self.version(algorithm, version).artifact_ref(self.artifact_base_url)

    def published_artifact(self, sha256: str) -> tuple[Path, int]:
        """(blob path, size) of a published, signed archive; :class:`NotFound`
        for anything else (unknown, never published, or a crash orphan)."""
        if not _SHA_RE.match(sha256 or ""):
            raise NotFound(f"{sha256!r} is not a sha256", field="sha256")
        hit = self._published_cache.get(sha256)
        if hit is not None:
            return hit
        with self._read() as con:
            row = con.execute(
                "SELECT archive_size FROM versions WHERE archive_sha256=? AND signature != ''",
                (sha256,),
            ).fetchone()
        if row is None:
            raise NotFound(f"artifact {sha256} is not published", field="sha256")
        path = self.blob_path(sha256)
        if not path.is_file() or path.stat().st_size != row["archive_size"]:
            raise NotFound(f"artifact {sha256}: blob missing from the store", field="sha256")
        self._published_cache[sha256] = (path, row["archive_size"])
        return path, row["archive_size"]

    def transitions(self, algorithm: str | None = None) -> list[Transition]:
        """The append-only log, oldest first."""
        with self._read() as con:
            if algorithm is None:
                rows = con.execute("SELECT * FROM transitions ORDER BY seq").fetchall()
            else:
                rows = con.execute(
                    "SELECT * FROM transitions WHERE algorithm=? ORDER BY seq", (algorithm,)
                ).fetchall()
        return [Transition.model_validate(dict(r)) for r in rows]

    # -- channels ---------------------------------------------------------------

    def _active_rollout(
        self, con: sqlite3.Connection, algorithm: str, channel: str
    ) -> sqlite3.Row | None:
        q = ",".join("?" * len(ACTIVE_STATES))
        return con.execute(
            f"SELECT * FROM rollouts WHERE algorithm=? AND channel=? AND state IN ({q})",
            (algorithm, channel, *[s.value for s in ACTIVE_STATES]),
        ).fetchone()

    def _move_channel(
        self,
        con: sqlite3.Connection,
        algorithm: str,
        channel: str,
        version: str,
        kind: str,
        reason: str,
    ) -> str | None:
        row = con.execute(
            "SELECT version FROM channels WHERE algorithm=? AND channel=?", (algorithm, channel)
        ).fetchone()
        current = row["version"] if row else None
        if kind == "promote" and current is not None and _newer(current, version):
            raise DowngradeRefused(
                f"{algorithm} channel {channel!r} is on {current}; moving it to the older "
                f"{version} is a downgrade and needs an explicit rollback",
                field="version",
            )
        if current == version:
            return current
        con.execute(
            "INSERT INTO channels (algorithm, channel, version, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (algorithm, channel) DO UPDATE SET version=excluded.version,"
            " updated_at=excluded.updated_at",
            (algorithm, channel, version, _now()),
        )
        self._log(con, algorithm, kind, channel, current, version, reason)
        return current

    def _require_version(self, con: sqlite3.Connection, algorithm: str, version: str) -> None:
        if (
            con.execute(
                "SELECT 1 FROM versions WHERE algorithm=? AND version=?", (algorithm, version)
            ).fetchone()
            is None
        ):
            raise NotFound(f"{algorithm} {version} is not published", field="version")

    def promote(
        self, algorithm: str, version: str, channel: str, *, reason: str = ""
    ) -> str | None:
        """Point ``channel`` at ``version``. Refuses a downgrade (use
        :meth:`rollback`) and a channel held by an active rollout. Returns the
        previous version of the channel."""
        _check_channel(channel)
        with self._tx() as con:
            self._require_version(con, algorithm, version)
            active = self._active_rollout(con, algorithm, channel)
            if active is not None:
                raise RolloutConflict(
                    f"{algorithm} channel {channel!r} is held by rollout {active['id']} "
                    f"({active['state']}); wait for it or abort it",
                    field="channel",
                )
            previous = self._move_channel(
                con, algorithm, channel, version, "promote", reason or "promoted"
            )
        if previous != version:
            self.announce(algorithm)
        return previous

    def rollback(
        self,
        algorithm: str,
        channel: str,
        version: str | None = None,
        *,
        reason: str = "",
    ) -> str:
        """Explicitly move ``channel`` back to an older ``version`` (default: the
        version it had before the current one was promoted). Returns the version."""
        _check_channel(channel)
        with self._tx() as con:
            row = con.execute(
                "SELECT version FROM channels WHERE algorithm=? AND channel=?",
                (algorithm, channel),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"{algorithm} has no channel {channel!r} to roll back", field="channel"
                )
            current = row["version"]
            active = self._active_rollout(con, algorithm, channel)
            if active is not None:
                raise RolloutConflict(
                    f"{algorithm} channel {channel!r} is held by rollout {active['id']}; "
                    "abort the rollout (which rolls its devices back) first",
                    field="channel",
                )
            if version is None:
                prev = con.execute(
                    "SELECT from_value FROM transitions WHERE algorithm=? AND subject=? AND"
                    " kind='promote' AND to_value=? AND from_value IS NOT NULL"
                    " ORDER BY seq DESC LIMIT 1",
                    (algorithm, channel, current),
                ).fetchone()
                if prev is None:
                    raise NotFound(
                        f"{algorithm} channel {channel!r}: no earlier version to roll back to; "
                        "name the version",
                        field="version",
                    )
                version = prev["from_value"]
            assert version is not None
            self._require_version(con, algorithm, version)
            if not _newer(current, version):
                raise StoreError(
                    f"{algorithm} channel {channel!r} is on {current}; a rollback goes to an "
                    f"older version, not {version} (use promote)",
                    field="version",
                )
            self._move_channel(con, algorithm, channel, version, "rollback", reason or "rollback")
        self.announce(algorithm)
        return version

    # -- rollouts ---------------------------------------------------------------

    def start_rollout(
        self,
        algorithm: str,
        version: str,
        channel: str,
        groups: Sequence[Mapping[str, Any]],
        *,
        devices: Sequence[str] | None = None,
        success_gate: float = 0.9,
        error_gate: float = 0.2,
        reason: str = "",
    ) -> Rollout:
        """Start a staged rollout of ``version`` to ``channel`` through ``groups``
        (named device lists or percentages of ``devices``). The channel moves to
        ``version`` only when the last group passes the success gate."""
        _check_channel(channel)
        for name, gate in (("success_gate", success_gate), ("error_gate", error_gate)):
            if not 0 < gate <= 1:
                raise StoreError(f"{name} must be in (0, 1], got {gate}", field=name)
        resolved = resolve_groups(groups, devices, f"{algorithm}/{version}/{channel}")
        with self._tx() as con:
            self._require_version(con, algorithm, version)
            active = self._active_rollout(con, algorithm, channel)
            if active is not None:
                raise RolloutConflict(
                    f"{algorithm} channel {channel!r} already has rollout {active['id']} "
                    f"({active['state']})",
                    field="channel",
                )
            row = con.execute(
                "SELECT version FROM channels WHERE algorithm=? AND channel=?",
                (algorithm, channel),
            ).fetchone()
            current = row["version"] if row else None
            if current is not None and not _newer(version, current):
                if current == version:
                    raise StoreError(
                        f"{algorithm} channel {channel!r} is already on {version}",
                        field="version",
                    )
                raise DowngradeRefused(
                    f"{algorithm} channel {channel!r} is on {current}; rolling out the older "
                    f"{version} is a downgrade (use rollback)",
                    field="version",
                )
            now = _now()
            cur = con.execute(
                "INSERT INTO rollouts (algorithm, version, channel, from_version, groups,"
                " current_group, state, success_gate, error_gate, reason, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                (
                    algorithm,
                    version,
                    channel,
                    current,
                    json.dumps([{"name": n, "devices": d} for n, d in resolved]),
                    RolloutState.PENDING.value,
                    success_gate,
                    error_gate,
                    reason,
                    now,
                    now,
                ),
            )
            rid = int(cur.lastrowid or 0)
            self._log(con, algorithm, "rollout", str(rid), None, "pending", reason or "created")
            self._set_state(con, rid, RolloutState.RUNNING, f"started group 1 {resolved[0][0]!r}")
        self.announce(algorithm)
        return self.rollout(rid)

    def _set_state(self, con: sqlite3.Connection, rid: int, new: RolloutState, reason: str) -> None:
        row = con.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        old = RolloutState(row["state"])
        check_transition(rid, old, new)
        con.execute(
            "UPDATE rollouts SET state=?, updated_at=?, reason=? WHERE id=?",
            (new.value, _now(), reason, rid),
        )
        self._log(con, row["algorithm"], "rollout", str(rid), old.value, new.value, reason)

    def _rollout_row(self, con: sqlite3.Connection, rid: int) -> sqlite3.Row:
        row = con.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
        if row is None:
            raise NotFound(f"no rollout {rid}", field="rollout")
        return row

    def _progress(self, con: sqlite3.Connection, row: sqlite3.Row) -> Rollout:
        groups = json.loads(row["groups"])
        reports = {
            r["device"]: r
            for r in con.execute("SELECT * FROM rollout_reports WHERE rollout_id=?", (row["id"],))
        }
        out = []
        for i, g in enumerate(groups):
            healthy = failed = 0
            for d in g["devices"]:
                r = reports.get(d)
                if r is None or r["version"] != row["version"]:
                    continue
                if r["healthy"]:
                    healthy += 1
                else:
                    failed += 1
            out.append(
                GroupProgress(
                    name=g["name"],
                    devices=g["devices"],
                    started=i <= row["current_group"],
                    healthy=healthy,
                    failed=failed,
                    waiting=len(g["devices"]) - healthy - failed,
                )
            )
        return Rollout(
            id=row["id"],
            algorithm=row["algorithm"],
            version=row["version"],
            channel=row["channel"],
            from_version=row["from_version"],
            state=RolloutState(row["state"]),
            current_group=row["current_group"],
            success_gate=row["success_gate"],
            error_gate=row["error_gate"],
            groups=out,
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
            reason=row["reason"],
        )

    def rollout(self, rollout_id: int) -> Rollout:
        with self._read() as con:
            return self._progress(con, self._rollout_row(con, rollout_id))

    def rollouts(self, algorithm: str | None = None) -> list[Rollout]:
        with self._read() as con:
            if algorithm is None:
                rows = con.execute("SELECT * FROM rollouts ORDER BY id").fetchall()
            else:
                rows = con.execute(
                    "SELECT * FROM rollouts WHERE algorithm=? ORDER BY id", (algorithm,)
                ).fetchall()
            return [self._progress(con, r) for r in rows]

    def observe(self, reports: Iterable[DeviceReport | Mapping[str, Any]]) -> list[Rollout]:
        """Record device reports against active rollouts of their algorithm,
        then :meth:`reconcile`. Reports of devices outside a rollout's started
        groups are ignored for it."""
        parsed = [
            r if isinstance(r, DeviceReport) else DeviceReport.model_validate(r) for r in reports
        ]
        with self._tx() as con:
            q = ",".join("?" * len(ACTIVE_STATES))
            active = con.execute(
                f"SELECT * FROM rollouts WHERE state IN ({q})", [s.value for s in ACTIVE_STATES]
            ).fetchall()
            for row in active:
                groups = json.loads(row["groups"])
                started = {d for g in groups[: row["current_group"] + 1] for d in g["devices"]}
                for rep in parsed:
                    if rep.algorithm != row["algorithm"] or rep.device not in started:
                        continue
                    con.execute(
                        "INSERT INTO rollout_reports (rollout_id, device, version, healthy,"
                        " error, at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, device)"
                        " DO UPDATE SET version=excluded.version, healthy=excluded.healthy,"
                        " error=excluded.error, at=excluded.at",
                        (row["id"], rep.device, rep.version, int(rep.healthy), rep.error, _now()),
                    )
        return self.reconcile()

    def reconcile(self, rollout_id: int | None = None) -> list[Rollout]:
        """Apply the gates to running rollouts: abort + roll back when the share
        of failed devices in the started groups reaches ``error_gate``; start the
        next group (or succeed and move the channel) when the share of healthy
        devices in the current group reaches ``success_gate``."""
        changed: set[str] = set()
        ids: list[int] = []
        with self._tx() as con:
            if rollout_id is None:
                rows = con.execute(
                    "SELECT * FROM rollouts WHERE state=?", (RolloutState.RUNNING.value,)
                ).fetchall()
            else:
                rows = [self._rollout_row(con, rollout_id)]
            for row in rows:
                ids.append(row["id"])
                if RolloutState(row["state"]) is not RolloutState.RUNNING:
                    continue
                if self._reconcile_one(con, row["id"]):
                    changed.add(row["algorithm"])
        for a in sorted(changed):
            self.announce(a)
        return [self.rollout(i) for i in ids]

    def _reconcile_one(self, con: sqlite3.Connection, rid: int) -> bool:
        moved = False
        while True:
            row = self._rollout_row(con, rid)
            if RolloutState(row["state"]) is not RolloutState.RUNNING:
                return moved
            prog = self._progress(con, row)
            started = [g for g in prog.groups if g.started]
            n_started = sum(len(g.devices) for g in started)
            failed = sum(g.failed for g in started)
            if failed and failed / n_started >= row["error_gate"]:
                errs = [
                    f"{r['device']}: {r['error'] or 'unhealthy'}"
                    for r in con.execute(
                        "SELECT device, error FROM rollout_reports WHERE rollout_id=? AND"
                        " healthy=0 AND version=? ORDER BY device LIMIT 5",
                        (rid, row["version"]),
                    )
                ]
                self._abort(
                    con,
                    rid,
                    f"error gate: {failed}/{n_started} devices failed "
                    f"({failed / n_started:.0%} >= {row['error_gate']:.0%}): {'; '.join(errs)}",
                )
                return True
            cur = prog.groups[row["current_group"]]
            share = cur.healthy / len(cur.devices)
            if share < row["success_gate"]:
                return moved
            nxt = row["current_group"] + 1
            if nxt < len(prog.groups):
                con.execute(
                    "UPDATE rollouts SET current_group=?, updated_at=? WHERE id=?",
                    (nxt, _now(), rid),
                )
                self._log(
                    con,
                    row["algorithm"],
                    "rollout-group",
                    str(rid),
                    cur.name,
                    prog.groups[nxt].name,
                    f"group {cur.name!r} passed the success gate ({cur.healthy}/"
                    f"{len(cur.devices)} healthy >= {row['success_gate']:.0%}); "
                    f"started group {nxt + 1} {prog.groups[nxt].name!r}",
                )
                moved = True
                continue
            self._set_state(
                con,
                rid,
                RolloutState.SUCCEEDED,
                f"last group {cur.name!r} passed the success gate ({cur.healthy}/"
                f"{len(cur.devices)} healthy)",
            )
            self._move_channel(
                con,
                row["algorithm"],
                row["channel"],
                row["version"],
                "promote",
                f"rollout {rid} succeeded",
            )
            return True

    def _abort(self, con: sqlite3.Connection, rid: int, reason: str) -> None:
        row = self._rollout_row(con, rid)
        self._set_state(con, rid, RolloutState.ABORTED, reason)
        back = row["from_version"] or "no version"
        self._set_state(
            con,
            rid,
            RolloutState.ROLLED_BACK,
            f"channel {row['channel']!r} stays on {back}; devices of started groups go back to it",
        )

    def pause_rollout(self, rollout_id: int, *, reason: str = "") -> Rollout:
        with self._tx() as con:
            self._rollout_row(con, rollout_id)
            self._set_state(con, rollout_id, RolloutState.PAUSED, reason or "paused")
        return self.rollout(rollout_id)

    def resume_rollout(self, rollout_id: int, *, reason: str = "") -> Rollout:
        with self._tx() as con:
            self._rollout_row(con, rollout_id)
            self._set_state(con, rollout_id, RolloutState.RUNNING, reason or "resumed")
        self.reconcile(rollout_id)
        return self.rollout(rollout_id)

    def abort_rollout(self, rollout_id: int, *, reason: str = "") -> Rollout:
        """Abort by hand; devices of started groups go back to the channel's version."""
        with self._tx() as con:
            row = self._rollout_row(con, rollout_id)
            self._abort(con, rollout_id, reason or "aborted by operator")
        self.announce(row["algorithm"])
        return self.rollout(rollout_id)

    def version_for(self, algorithm: str, channel: str, device_id: str) -> str | None:
        """The version ``device_id`` should run for ``algorithm`` on ``channel``:
        the rollout's version if the device is in a started group of an active
        rollout, else the channel's version (None when the channel is unset)."""
        with self._read() as con:
            active = self._active_rollout(con, algorithm, channel)
            if active is not None:
                groups = json.loads(active["groups"])
                for g in groups[: active["current_group"] + 1]:
                    if device_id in g["devices"]:
                        return active["version"]
            row = con.execute(
                "SELECT version FROM channels WHERE algorithm=? AND channel=?",
                (algorithm, channel),
            ).fetchone()
        return row["version"] if row else None

    # -- announcements ----------------------------------------------------------

    def announcement(self, algorithm: str) -> Announcement:
        """A signed announcement of ``algorithm``'s channels (and the artifacts
        of their versions and of active rollouts), valid for ``announce_ttl``."""
        if self.private_key is None:
            raise StoreError("the store has no private key to sign announcements", field="key")
        with self._read() as con:
            channels = self._channels_of(con, algorithm)
            q = ",".join("?" * len(ACTIVE_STATES))
            rolling = [
                r["version"]
                for r in con.execute(
                    f"SELECT version FROM rollouts WHERE algorithm=? AND state IN ({q})",
                    (algorithm, *[s.value for s in ACTIVE_STATES]),
                )
            ]
        artifacts = {
            v: self.artifact_ref(algorithm, v)
            for v in sorted(set(channels.values()) | set(rolling))
        }
        return make_announcement(
            algorithm, channels, artifacts, self.private_key, ttl=self.announce_ttl
        )

    def announce(self, algorithm: str) -> Announcement | None:
        """Send the announcement of ``algorithm`` through the announcer, if any.
        A failure is logged and kept in ``last_announce_error``; the channel
        change itself stands (the serving process re-announces periodically)."""
        if self.announcer is None or self.private_key is None:
            return None
        try:
            ann = self.announcement(algorithm)
            self.announcer(ann)
        except Exception as e:  # broker down must not undo a committed change
            self.last_announce_error = f"{algorithm}: {e}"
            log.error("announcement for %s failed: %s", algorithm, e)
            return None
        self.last_announce_error = None
        return ann

    def announce_all(self) -> int:
        """Re-send every algorithm's announcement (refreshes ``expires_at``)."""
        n = 0
        for a in self.algorithms():
            if self.announce(a["id"]) is not None:
                n += 1
        return n
