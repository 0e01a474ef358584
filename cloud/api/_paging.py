"""Offset paging over a dataset's samples for the API and the console.

``Catalog.list_samples`` filters on ``dataset_samples`` alone (provenance is
denormalised onto the membership row, each filter has a covering index) and
fetches the page's keys before joining ``samples`` and ``annotations`` for the
page rows only, so a deep ``offset`` skips index entries, not joined rows.
"""

from __future__ import annotations

from typing import Any

from cloud.catalog import Page, SampleView
from cloud.errors import InvalidInput


def page_samples(
    catalog: Any,
    dataset: str,
    *,
    offset: int = 0,
    limit: int = 50,
    after: str | None = None,
    **filters: Any,
) -> Page[SampleView]:
    """One page of ``dataset``'s samples (``Catalog.list_samples``); a page past
    the end is empty and carries the true total."""
    if offset < 0:
        raise InvalidInput("offset must not be negative", field="offset")
    return catalog.list_samples(dataset, offset=offset, limit=limit, after=after, **filters)


__all__ = ["page_samples"]
