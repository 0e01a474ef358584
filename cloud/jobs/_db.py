"""Catalog sessions of a job-system process (one migrated catalog per database URL)."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from cloud.core.config import Settings

_FACTORIES: dict[str, sessionmaker[Session]] = {}
_LOCK = threading.Lock()


def catalog_sessions(settings: Settings) -> sessionmaker[Session]:
    """A session factory on the settings' catalog, migrated to the newest schema
    (``Catalog.open`` serialises migrations between processes)."""
    from cloud.catalog import Catalog

    url = settings.database_url
    with _LOCK:
        factory = _FACTORIES.get(url)
        if factory is None:
            factory = Catalog.open(settings).sessions
            _FACTORIES[url] = factory
    return factory
