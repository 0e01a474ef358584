"""schemathesis over the whole OpenAPI spec of ``create_app`` (in-process ASGI,
admin token): no operation may answer with a 5xx."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from cloud.api.main import create_app
from cloud.core.config import Settings
from tests._api_helpers import ADMIN_TOKEN, png_bytes

_DATA = Path(tempfile.mkdtemp(prefix="cb-schemathesis-"))
atexit.register(shutil.rmtree, _DATA, True)
_PREFIX = f"cbtest:{uuid.uuid4().hex[:10]}"


def _app():  # type: ignore[no-untyped-def]
    app = create_app(
        Settings(
            data_dir=_DATA,
            bootstrap_token=ADMIN_TOKEN,
            max_upload_mb=1,
            redis_url="redis://127.0.0.1:6379/15",
            job_prefix=f"{_PREFIX}:jobs",
            events_channel=f"{_PREFIX}:events",
        )
    )
    # something to find: a dataset with a labeled sample and an annotation task
    catalog = app.state.catalog
    catalog.create_dataset("cars", labels=["car", "bus"])
    s = catalog.add_image_bytes("cars", png_bytes(1), source="a.png")
    catalog.add_image_bytes("cars", png_bytes(2), source="b.png")
    catalog.annotate("cars", s.id, label="car", annotator="seed")
    return app


APP = _app()
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP).exclude(
    # an endless text/event-stream: a request never completes by design
    path="/api/v1/events"
)
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.integration
@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case):  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=HEADERS, checks=[not_a_server_error])


@pytest.fixture(scope="module", autouse=True)
def _cleanup_redis_keys():  # type: ignore[no-untyped-def]
    yield
    import redis

    r = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        for key in r.scan_iter(f"{_PREFIX}:*"):
            r.delete(key)
    finally:
        r.close()
