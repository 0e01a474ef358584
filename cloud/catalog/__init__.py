"""The data catalog: datasets, samples (content-addressed), append-only
annotations, immutable dataset versions with a frozen test split, lineage.

``Catalog.open()`` migrates the database named by the settings (SQLite by
default, PostgreSQL with ``CITYBRAIN_DB_URL``) and wires the blob store.

Errors (all from :mod:`cloud.errors`)::

    CitybrainError
    ├── InvalidInput   bad name, unknown label, bad box, bad cursor
    │   └── CorruptImage   image bytes that do not decode completely
    ├── NotFound       dataset, sample, version, task
    └── Conflict       duplicate dataset name, reused idempotency key
"""

from __future__ import annotations

from cloud.catalog._media import CorruptImage, ImageInfo, probe_image
from cloud.catalog._schemas import (
    AddResult,
    Box,
    DatasetStats,
    Page,
    SampleIn,
    SampleView,
    VersionItem,
)
from cloud.catalog._service import Catalog, DatasetRef

__all__ = [
    "AddResult",
    "Box",
    "Catalog",
    "CorruptImage",
    "DatasetRef",
    "DatasetStats",
    "ImageInfo",
    "Page",
    "SampleIn",
    "SampleView",
    "VersionItem",
    "probe_image",
]
