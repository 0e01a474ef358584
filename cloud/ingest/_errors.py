"""Why a hard-sample message is rejected (each reason is a metric label)."""

from __future__ import annotations

import enum


class RejectReason(str, enum.Enum):
    TOPIC = "topic"  # not cb/v1/dev/{d}/hard
    SCHEMA = "schema"  # unknown or missing schema version
    MALFORMED = "malformed"  # not JSON, fields invalid, bad base64
    DEVICE_MISMATCH = "device_mismatch"  # sample.device differs from the topic's device
    BAD_IMAGE = "bad_image"  # not a complete JPEG, or too large
    BLOB_MISSING = "blob_missing"  # blob_ref names no stored blob
    KEY_CONFLICT = "key_conflict"  # idempotency key already used for other bytes
    BAD_ALGORITHM = "bad_algorithm"  # algorithm id does not make a dataset name


class IngestError(Exception):
    """Base of the ingest errors."""


class Rejected(IngestError):
    """A message that will never be stored; it is counted, logged and acknowledged."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
