"""Token store rules and offset->keyset paging equivalence."""

from __future__ import annotations

import pytest

from cloud.api._paging import page_samples
from cloud.api.tokens import (
    create_token,
    ensure_bootstrap_token,
    find_token,
    hash_token,
    list_tokens,
    resolve_token,
    revoke_token,
)
from cloud.catalog import Catalog
from cloud.catalog.db import transaction
from cloud.catalog.models import ApiToken, Role
from cloud.core.config import Settings
from cloud.errors import Conflict, InvalidInput, NotFound
from tests._api_helpers import png_bytes


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog.open(Settings(data_dir=tmp_path / "data"))
    yield cat
    cat.close()


def test_tokens_are_hashed_revocable_and_bootstrap_respects_revocation(catalog):
    with transaction(catalog.sessions) as s:
        row, secret = create_token(s, "ann", "annotator")
        assert row.token_sha256 == hash_token(secret) and secret not in row.token_sha256
        assert resolve_token(s, secret).name == "ann"
        assert resolve_token(s, secret + "x") is None
        with pytest.raises(InvalidInput):
            create_token(s, "x", "root")
        with pytest.raises(InvalidInput):
            create_token(s, "  ", "viewer")
    with transaction(catalog.sessions) as s:
        boot = ensure_bootstrap_token(s, "a-long-bootstrap-secret")
        assert boot.role == Role.ADMIN
        assert ensure_bootstrap_token(s, "a-long-bootstrap-secret").id == boot.id  # idempotent
        revoke_token(s, boot.id)
        with pytest.raises(Conflict):
            revoke_token(s, boot.id)
    with transaction(catalog.sessions) as s:
        again = ensure_bootstrap_token(s, "a-long-bootstrap-secret")
        assert again.revoked  # a revoked bootstrap token is not resurrected
        assert resolve_token(s, "a-long-bootstrap-secret") is None
        with pytest.raises(InvalidInput):
            ensure_bootstrap_token(s, "short")
        create_token(s, "twin", "viewer")
        create_token(s, "twin", "viewer")
        with pytest.raises(InvalidInput):
            find_token(s, "twin")  # ambiguous: revoke by id
        with pytest.raises(NotFound):
            find_token(s, "nobody")
        assert len(list_tokens(s)) == 4
        assert s.query(ApiToken).count() == 4


def test_offset_paging_matches_the_catalog(catalog):
    catalog.create_dataset("d", labels=["a", "b"])
    ids = []
    for i in range(23):
        sample = catalog.add_image_bytes(
            "d", png_bytes(100 + i), source=f"cam{i % 2}/{i}.png", camera=f"cam{i % 2}"
        )
        ids.append(sample.id)
        if i % 3 == 0:
            catalog.annotate("d", sample.id, label="ab"[i % 2], annotator="t")
    labels = {i: "ab"[i % 2] for i in range(0, 23, 3)}

    def want_ids(filters: dict) -> list[str]:
        keep = {
            "label": lambda i: labels.get(i) == filters["label"],
            "labeled": lambda i: (i in labels) == filters["labeled"],
            "camera": lambda i: f"cam{i % 2}" == filters["camera"],
            "source": lambda i: f"cam{i % 2}/{i}.png".startswith(filters["source"]),
        }
        return [ids[i] for i in range(23) if all(keep[k](i) for k in filters)]

    cases = [
        {},
        {"label": "a"},
        {"labeled": False},
        {"camera": "cam1"},
        {"source": "cam0/"},
        {"source": "cam1/1"},
        {"source": ""},
        {"source": "cam"},
        {"source": "cam0/1􏿿"},
        {"camera": "cam0", "source": "cam0/2"},
    ]
    for filters in cases:
        expected = want_ids(filters)
        for offset in (0, 1, 4, 5, 9, 22, 40):
            got = page_samples(catalog, "d", offset=offset, limit=5, **filters)
            assert [x.id for x in got.items] == expected[offset : offset + 5], (filters, offset)
            assert got.total == len(expected) and got.offset == offset
    with pytest.raises(InvalidInput, match="offset"):
        page_samples(catalog, "d", offset=-1)
    with pytest.raises(NotFound):
        page_samples(catalog, "nope", offset=3, limit=5)
