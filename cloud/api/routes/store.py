"""The algorithm store under ``/api/v1/store``: :func:`algorithm_store.make_router`
over the store in ``settings.store_dir``.

Access:

* reads (algorithms, versions, channels, rollouts, transitions) need any valid
  token (viewer and up);
* promote, rollback, rollouts and their pause/resume/abort need an operator;
* ``GET|HEAD /artifacts/{sha256}`` needs **no token**: edge devices download
  packages with HTTP Range and do not hold API tokens (there is no device
  role). Only signed, published artifacts are served, addressed by their
  sha256, and every device verifies the ed25519 signature and per-file hashes
  of a package against the store key it pins, so an unauthenticated download
  can neither forge nor alter anything.

Channel moves (promote, rollback, rollouts) are announced, signed and
retained, on ``store/announce/{a}`` of the broker at ``settings.mqtt_url``.

The store is opened per request from the key files, so a key created with
``citybrain store keygen`` while the server runs is picked up at once. Until a
key exists the read routes answer (an empty store), and write routes answer
409 Conflict (the store is not in a state to change yet: no 5xx for a setup
step the operator can do) with the hint to run ``citybrain store keygen``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from cloud.api.deps import at_least, get_current_user
from cloud.api.errors import ERROR_RESPONSES
from cloud.catalog.models import Role
from cloud.core.config import Settings

#: store methods that change state: they need a store key
WRITE_METHODS = frozenset(
    {
        "promote",
        "rollback",
        "start_rollout",
        "pause_rollout",
        "resume_rollout",
        "abort_rollout",
        "publish",
        "observe",
        "reconcile",
    }
)


def key_path(settings: Settings) -> Path:
    return settings.store_key_file or settings.store_dir / "key"


class BrokerAnnouncer:
    """Sends a signed announcement retained on ``store/announce/{a}`` of the
    broker at ``settings.mqtt_url``, connecting for each (channel moves are
    rare operator actions). A broker that cannot be reached is logged by the
    store and the channel change stands (devices also poll desired state)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def __call__(self, announcement: Any) -> None:
        import algorithm_store as st

        announcer = st.MqttAnnouncer(self.url, timeout=self.timeout)
        try:
            announcer(announcement)
        finally:
            announcer.close()


class SettingsStore:
    """Stands in for an :class:`algorithm_store.AlgorithmStore` opened from
    ``settings``: re-opened when the key files change, state-changing calls
    refused (409) while the store has no key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._store: Any = None

    def _key_stamp(self) -> tuple[Any, ...]:
        import algorithm_store as st

        kp = key_path(self.settings)
        pub = st.public_key_path(kp)
        return tuple(p.stat().st_mtime_ns if p.is_file() else None for p in (kp, pub))

    def current(self) -> Any:
        import algorithm_store as st

        stamp = self._key_stamp()
        with self._lock:
            if self._store is None or stamp != self._stamp:
                kp = key_path(self.settings)
                private = public = None
                if kp.is_file():
                    private = st.load_private_key(kp)
                    public = st.public_key_raw(private)
                elif st.public_key_path(kp).is_file():
                    public = st.load_public_key(st.public_key_path(kp))
                self._store = st.AlgorithmStore(
                    self.settings.store_dir,
                    public_key=public,
                    private_key=private,
                    announcer=BrokerAnnouncer(self.settings.mqtt_url),
                )
                self._stamp = stamp
            return self._store

    @property
    def has_key(self) -> bool:
        return any(v is not None for v in self._key_stamp())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in WRITE_METHODS and not self.has_key:
            import algorithm_store as st

            class NoStoreKey(st.StoreError):
                kind = "conflict"

            raise NoStoreKey(
                f"{key_path(self.settings)}: the store has no signing key yet; "
                "create one with `citybrain store keygen`",
                field="key",
            )
        return getattr(self.current(), name)


def _viewer_unless_artifact(request: Request) -> None:
    """Every store route needs a viewer token except artifact downloads (devices)."""
    route = request.scope.get("route")
    if getattr(route, "path", "").endswith("/artifacts/{sha256}"):
        return
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    scheme, _, cred = header.partition(" ")
    creds = (
        HTTPAuthorizationCredentials(scheme=scheme, credentials=cred.strip())
        if scheme.lower() == "bearer" and cred.strip()
        else None
    )
    at_least(Role.VIEWER)(get_current_user(request, creds))


def store_router(settings: Settings) -> APIRouter:
    """``/store/...`` for the store of ``settings`` (mounted under ``/api/v1``)."""
    import algorithm_store as st

    outer = APIRouter(prefix="/store", responses=ERROR_RESPONSES)
    inner = st.make_router(SettingsStore(settings), require_operator=at_least(Role.OPERATOR))
    outer.include_router(inner, dependencies=[Depends(_viewer_unless_artifact)])
    return outer


__all__ = ["WRITE_METHODS", "BrokerAnnouncer", "SettingsStore", "key_path", "store_router"]
