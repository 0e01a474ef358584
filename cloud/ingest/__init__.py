"""Hard-sample ingest: edge devices' hard cases into the catalog, exactly once.

``citybrain ingest`` subscribes to ``$share/ingest/cb/v1/dev/+/hard`` (MQTT v5
shared subscription, so several consumers split the load) with a persistent
session (clean start off, session expiry), so QoS 1 messages sent while it is
down are delivered when it is back. Each message is an
``edge_agent.protocol.HardSample``; its image goes to the blob store and a
``Sample`` row with its provenance (device, stream as camera, model version,
selector, reason, scores, capture time, idempotency key = ``sample.id``) joins
the ``field_hard`` pool of the dataset ``field-<algorithm>`` (created on first
use). A message is acknowledged only after its batch is committed; a
redelivery is recognised by the idempotency key (a unique column).

Rejected messages (counted by reason, logged, acknowledged, never crash)::

    topic            not cb/v1/dev/{d}/hard
    schema           unknown or missing schema version
    malformed        not JSON, invalid fields, bad base64
    device_mismatch  sample.device is not the topic's device
    bad_image        not a complete JPEG, or too large
    blob_missing     blob_ref names no stored blob
    key_conflict     idempotency key already used for different bytes
    bad_algorithm    algorithm id too long for a dataset name

Prometheus counters: ``citybrain_ingest_received_total``,
``citybrain_ingest_stored_total``, ``citybrain_ingest_duplicate_total``,
``citybrain_ingest_rejected_total{reason}``.

Errors::

    IngestError
    └── Rejected   a message that will never be stored (has ``reason``, ``detail``)
"""

from __future__ import annotations

from cloud.ingest._consumer import (
    DATASET_PREFIX,
    FIELD_POOL,
    HardSampleIngest,
    IngestConfig,
    IngestStats,
    field_dataset_name,
    parse_broker_url,
)
from cloud.ingest._errors import IngestError, Rejected, RejectReason

__all__ = [
    "DATASET_PREFIX",
    "FIELD_POOL",
    "HardSampleIngest",
    "IngestConfig",
    "IngestError",
    "IngestStats",
    "RejectReason",
    "Rejected",
    "field_dataset_name",
    "parse_broker_url",
]
