"""The wire contract between cloud, algorithm store and edge devices.

Everything that crosses MQTT or sits inside a signed package is defined here:
topic names, the JSON message models (each with a ``schema`` version), the
algorithm package manifest, its canonical signing bytes and verification, and
the one table mapping protocol errors to MQTT v5 reason codes.

This module depends on the standard library, pydantic and cryptography only,
so that every side (device, store, scheduler, cloud) can import it.

Exception tree::

    ProtocolError
    ├── SchemaVersionError    unknown or missing ``schema`` in a message
    ├── MessageInvalid        malformed JSON or a payload failing validation
    ├── StaleMetadata         an announcement past ``expires_at`` or older than one seen
    └── PackageInvalid        a package that must not be trusted
        ├── SignatureInvalid  unsigned, wrong key, or bad signature
        ├── HashMismatch      a file whose sha256/size differs from the manifest
        └── UnsafePath        a path escaping the package root, links, devices
"""

from __future__ import annotations

import base64
import enum
import hashlib
import io
import json
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PREFIX = "cb/v1/"

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ProtocolError(ValueError):
    """Base of every wire-contract error."""


class SchemaVersionError(ProtocolError):
    """A message whose ``schema`` field is missing or not understood."""


class MessageInvalid(ProtocolError):
    """A message that is not JSON or fails validation."""


class StaleMetadata(ProtocolError):
    """An announcement past its ``expires_at`` (TUF freeze attack) or issued
    before one already accepted (replayed metadata)."""


class PackageInvalid(ProtocolError):
    """A package or artifact that must not be trusted."""


class SignatureInvalid(PackageInvalid):
    """Missing signature, unknown key, or signature that does not verify."""


class HashMismatch(PackageInvalid):
    """A file whose sha256 or size differs from what the manifest says."""


class UnsafePath(PackageInvalid):
    """A member path that escapes the package root, or a link/device member."""


class ReasonCode(enum.IntEnum):
    """MQTT v5 reason codes used on this contract (subset of the spec)."""

    SUCCESS = 0x00
    UNSPECIFIED_ERROR = 0x80
    MALFORMED = 0x81
    NOT_AUTHORIZED = 0x87
    TOPIC_NAME_INVALID = 0x90
    PAYLOAD_FORMAT_INVALID = 0x99
    QUOTA_EXCEEDED = 0x97
    IMPLEMENTATION_SPECIFIC = 0x83


#: The one place protocol errors map to MQTT reason codes. Most specific first.
REASON_CODES: tuple[tuple[type[Exception], ReasonCode], ...] = (
    (SchemaVersionError, ReasonCode.PAYLOAD_FORMAT_INVALID),
    (MessageInvalid, ReasonCode.MALFORMED),
    (SignatureInvalid, ReasonCode.NOT_AUTHORIZED),
    (HashMismatch, ReasonCode.IMPLEMENTATION_SPECIFIC),
    (UnsafePath, ReasonCode.IMPLEMENTATION_SPECIFIC),
    (PackageInvalid, ReasonCode.IMPLEMENTATION_SPECIFIC),
)


def reason_code_for(exc: BaseException) -> ReasonCode:
    """The MQTT v5 reason code that reports ``exc``."""
    for cls, code in REASON_CODES:
        if isinstance(exc, cls):
            return code
    return ReasonCode.UNSPECIFIED_ERROR


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_', '.', '-' "
            "(no '/', '+', '#', spaces), starting with a letter or digit"
        )
    return value


class Topics:
    """Topic names of the contract. ``d`` = device id, ``a`` = algorithm id."""

    @staticmethod
    def desired(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/desired"

    @staticmethod
    def reported(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/reported"

    @staticmethod
    def status(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/status"

    @staticmethod
    def hard(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/hard"

    @staticmethod
    def hard_receipt(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/hard/receipt"

    @staticmethod
    def events(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/events"

    @staticmethod
    def chunk(d: str) -> str:
        return f"{PREFIX}dev/{_check_id(d, 'device id')}/chunk"

    @staticmethod
    def announce(a: str) -> str:
        return f"{PREFIX}store/announce/{_check_id(a, 'algorithm id')}"

    CHUNK_REQUEST = f"{PREFIX}store/chunk/req"
    ALL_HARD = f"{PREFIX}dev/+/hard"
    ALL_STATUS = f"{PREFIX}dev/+/status"
    ALL_REPORTED = f"{PREFIX}dev/+/reported"
    ALL_EVENTS = f"{PREFIX}dev/+/events"
    ALL_ANNOUNCE = f"{PREFIX}store/announce/+"

    @staticmethod
    def device_of(topic: str) -> str:
        """The device id inside a ``cb/v1/dev/{d}/...`` topic."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] + "/" + parts[1] + "/" != PREFIX or parts[2] != "dev":
            raise MessageInvalid(f"not a device topic: {topic!r}")
        return parts[3]


# ---------------------------------------------------------------------------
# Message models
# ---------------------------------------------------------------------------

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")]
SemVer = Annotated[
    str,
    Field(
        pattern=r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?$",
        description="semantic version MAJOR.MINOR.PATCH[-pre][+build]",
    ),
]
Ident = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$", description="identifier")
]


def semver_key(version: str) -> tuple[int, int, int, int, tuple[Any, ...]]:
    """Sort key for a semantic version; a pre-release sorts before its release."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.\-]+))?(?:\+.*)?$", version)
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = m.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


class _Strict(BaseModel):
    """Unknown keys are rejected; fields are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ArtifactRef(_Strict):
    """Points at one package archive in the store."""

    sha256: Sha256Hex = Field(description="sha256 of the package archive")
    size: int = Field(gt=0, description="archive size in bytes")
    signature: str = Field(
        min_length=1, description="base64 ed25519 signature of the package manifest"
    )
    url: str | None = Field(default=None, description="optional HTTP URL for Range downloads")


class Schedule(_Strict):
    """When an assignment is active (device local time). Empty = always."""

    hours: list[Annotated[int, Field(ge=0, le=23)]] = Field(
        default_factory=list, description="hours of day (0-23) when active; empty = all"
    )
    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=list, description="weekdays (0=Monday) when active; empty = all"
    )


class Assignment(_Strict):
    """One algorithm version running on one stream of a device."""

    stream: Ident = Field(description="stream id on the device (usually the camera id)")
    source: str = Field(min_length=1, description="video file, image folder, or rtsp/http URL")
    algorithm: Ident = Field(description="algorithm id in the store")
    version: SemVer = Field(description="algorithm version")
    artifact: ArtifactRef
    params: dict[str, Any] = Field(default_factory=dict, description="runtime overrides")
    fps: float = Field(default=2.0, gt=0, le=120, description="target frames per second")
    schedule: Schedule = Field(default_factory=Schedule)


class DesiredState(_Strict):
    """Retained on ``dev/{d}/desired``: what the device must run."""

    schema_: Literal["citybrain.desired/1"] = Field(default="citybrain.desired/1", alias="schema")
    device: Ident
    revision: int = Field(ge=0, description="monotonic; a device ignores older revisions")
    assignments: list[Assignment] = Field(default_factory=list)
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = Field(
        default=None, description="after this instant a device keeps running but reports stale"
    )


class StreamHealth(_Strict):
    stream: str
    state: Literal["running", "stopped", "error"]
    fps: float = 0.0
    frames: int = 0
    dropped: int = 0
    inference_ms: float = 0.0
    error: str | None = None


class LoadedModel(_Strict):
    algorithm: str
    version: str
    runtime: str = Field(description="onnxruntime-cpu, onnxruntime-cuda, tensorrt")
    sha256: Sha256Hex


class OutboxState(_Strict):
    """The device's hard-sample outbox (store-and-forward queue)."""

    depth: int = Field(ge=0, description="samples waiting for the cloud's receipt")
    dropped: int = Field(default=0, ge=0, description="oldest samples dropped by the size cap")
    oldest_age_s: float | None = Field(
        default=None, ge=0, description="age of the oldest waiting sample; None when empty"
    )


class ReportedState(_Strict):
    """Retained on ``dev/{d}/reported``: what the device actually runs.

    Fields added later are optional with a default (so the schema stays
    ``citybrain.reported/1``): ``outbox``."""

    schema_: Literal["citybrain.reported/1"] = Field(default="citybrain.reported/1", alias="schema")
    device: Ident
    applied_revision: int = Field(ge=-1, description="-1 before any desired state was applied")
    models: list[LoadedModel] = Field(default_factory=list)
    streams: list[StreamHealth] = Field(default_factory=list)
    last_error: str | None = None
    rejected: int = Field(default=0, ge=0, description="messages rejected since start")
    progress: dict[str, float] = Field(
        default_factory=dict,
        description="work in progress -> fraction done (0..1), e.g. "
        "'tiny-cls 1.2.0 download' or 'tiny-cls 1.2.0 tensorrt build'",
    )
    outbox: OutboxState | None = Field(
        default=None, description="hard-sample outbox; None from agents that do not report it"
    )
    at: datetime = Field(default_factory=utcnow)


class HardwareProfile(_Strict):
    target: str = Field(description="hardware target name, e.g. cpu-x86, gpu-sm87")
    cpu: str = ""
    cores: int = 0
    memory_mb: int = 0
    gpu: str | None = None
    gpu_arch: str | None = Field(default=None, description="e.g. sm87")
    tensorrt: str | None = None


class DeviceStatus(_Strict):
    """Retained on ``dev/{d}/status``; the last will says ``offline``."""

    schema_: Literal["citybrain.status/1"] = Field(default="citybrain.status/1", alias="schema")
    device: Ident
    state: Literal["online", "offline"]
    agent_version: str = ""
    hardware: HardwareProfile | None = None
    at: datetime = Field(default_factory=utcnow)


class HardSample(_Strict):
    """One hard case on ``dev/{d}/hard`` (QoS 1, not retained)."""

    schema_: Literal["citybrain.hard/1"] = Field(default="citybrain.hard/1", alias="schema")
    id: Annotated[str, Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")] = Field(
        description="idempotency key, unique per sample"
    )
    device: Ident
    stream: str
    algorithm: Ident
    model_version: SemVer
    selector: str = Field(description="which selector picked it")
    reason: str = Field(description="human-readable reason")
    scores: dict[str, float] = Field(default_factory=dict)
    captured_at: datetime = Field(default_factory=utcnow)
    image_jpeg_b64: str | None = Field(default=None, description="JPEG bytes, base64")
    blob_ref: Sha256Hex | None = Field(default=None, description="sha256 of an uploaded blob")

    @model_validator(mode="after")
    def _one_payload(self) -> HardSample:
        if (self.image_jpeg_b64 is None) == (self.blob_ref is None):
            raise ValueError("exactly one of image_jpeg_b64 or blob_ref must be set")
        return self


class HardSampleReceipt(_Strict):
    """Cloud -> device on ``dev/{d}/hard/receipt`` (QoS 1, not retained), sent once
    the catalog has committed them: hard samples stored (now or before) and those
    refused for good (id -> reason). A PUBACK only says the broker took a sample;
    a broker that crashes before saving it loses it, so a sender that wants
    end-to-end delivery keeps a sample until a receipt names it and re-sends it
    after a timeout (the cloud deduplicates by id)."""

    schema_: Literal["citybrain.hardreceipt/1"] = Field(
        default="citybrain.hardreceipt/1", alias="schema"
    )
    device: Ident
    stored: list[str] = Field(default_factory=list, description="ids in the catalog")
    rejected: dict[str, str] = Field(default_factory=dict, description="id -> reason")
    at: datetime = Field(default_factory=utcnow)


class Detection(_Strict):
    label: str
    score: float = Field(ge=0, le=1)
    box: list[float] | None = Field(
        default=None, min_length=4, max_length=4, description="x1,y1,x2,y2 normalised to 0..1"
    )


class Event(_Strict):
    """An event rule fired, on ``dev/{d}/events``."""

    schema_: Literal["citybrain.event/1"] = Field(default="citybrain.event/1", alias="schema")
    id: str = Field(min_length=8, max_length=128)
    device: Ident
    stream: str
    algorithm: Ident
    model_version: SemVer
    event: str
    detections: list[Detection]
    started_at: datetime
    at: datetime = Field(default_factory=utcnow)


class Announcement(_Strict):
    """Retained on ``store/announce/{a}``: latest version per channel.

    Announcements expire (TUF freeze attack): a device treats one past
    ``expires_at`` as stale and reports it rather than trusting it.
    """

    schema_: Literal["citybrain.announce/1"] = Field(default="citybrain.announce/1", alias="schema")
    algorithm: Ident
    channels: dict[str, SemVer] = Field(description="channel name -> version")
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict, description="version -> ref")
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    signature: str | None = Field(default=None, description="ed25519 over the canonical body")

    def signing_bytes(self) -> bytes:
        """Canonical bytes the signature covers: everything but ``signature``."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"signature"})
        return canonical_json(body)


class ChunkRequest(_Strict):
    """On ``store/chunk/req``; the reply goes to the MQTT v5 response topic
    (``dev/{d}/chunk``) with the request's correlation data."""

    schema_: Literal["citybrain.chunkreq/1"] = Field(default="citybrain.chunkreq/1", alias="schema")
    device: Ident
    sha256: Sha256Hex
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=4 * 1024 * 1024, description="at most 4 MiB per chunk")


class ChunkReplyHeader(_Strict):
    """Reply metadata, carried as MQTT v5 user properties next to raw bytes.

    ``status`` ``ok`` with payload bytes, or an error with an empty payload.
    """

    schema_: Literal["citybrain.chunk/1"] = Field(default="citybrain.chunk/1", alias="schema")
    sha256: Sha256Hex
    offset: int = Field(ge=0)
    length: int = Field(ge=0)
    total: int = Field(ge=0, description="whole artifact size")
    chunk_sha256: Sha256Hex | None = None
    status: Literal["ok", "not_found", "bad_request"] = "ok"
    error: str | None = None

    def to_user_properties(self) -> list[tuple[str, str]]:
        """The header as MQTT v5 user properties (one per field, None omitted)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return [(k, str(v)) for k, v in data.items()]

    @classmethod
    def from_user_properties(cls, pairs: list[tuple[str, str]]) -> ChunkReplyHeader:
        """Parse user properties written by :meth:`to_user_properties`."""
        data = dict(pairs)
        if data.get("schema") != "citybrain.chunk/1":
            raise SchemaVersionError(
                f"expected schema 'citybrain.chunk/1', got {data.get('schema')!r}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise MessageInvalid(_first_error(e)) from None


M = TypeVar("M", bound=BaseModel)

#: schema string -> model, for decoding messages that say what they are.
MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "citybrain.desired/1": DesiredState,
    "citybrain.reported/1": ReportedState,
    "citybrain.status/1": DeviceStatus,
    "citybrain.hard/1": HardSample,
    "citybrain.hardreceipt/1": HardSampleReceipt,
    "citybrain.event/1": Event,
    "citybrain.announce/1": Announcement,
    "citybrain.chunkreq/1": ChunkRequest,
    "citybrain.chunk/1": ChunkReplyHeader,
}


def encode(message: BaseModel) -> bytes:
    """JSON bytes of a message, with its ``schema`` field."""
    return message.model_dump_json(by_alias=True).encode()


def decode(payload: bytes | str, model: type[M]) -> M:
    """Parse ``payload`` as ``model``.

    Raises :class:`MessageInvalid` for bad JSON or fields and
    :class:`SchemaVersionError` when ``schema`` is missing or another version.
    """
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessageInvalid(f"payload is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MessageInvalid("payload is not a JSON object")
    expected = model.model_fields["schema_"].default
    got = data.get("schema")
    if got != expected:
        raise SchemaVersionError(f"expected schema {expected!r}, got {got!r}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MessageInvalid(_first_error(e)) from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{loc}: {err['msg']} (got {err.get('input')!r:.80})"


# ---------------------------------------------------------------------------
# Algorithm package manifest
# ---------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"


class Task(str, enum.Enum):
    CLASSIFY = "classify"
    DETECT = "detect"


class Preprocess(_Strict):
    """How a BGR video frame becomes the model input tensor."""

    resize: tuple[int, int] = Field(description="(height, width) the frame is resized to")
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = Field(default=1 / 255, gt=0, description="multiply pixel values first")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std values must be > 0, got {v}")
        return v


class InputSpec(_Strict):
    name: str = Field(default="input", description="ONNX input name")
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    shape: list[int | str] = Field(description="e.g. ['N', 3, 64, 64]")
    preprocess: Preprocess


class Postprocess(_Strict):
    """How raw outputs become labels/boxes."""

    output: Literal["logits", "probabilities", "boxes"] = Field(
        description="classify: logits or probabilities [N,C]; detect: boxes "
        "[N,K,6] rows (x1,y1,x2,y2 normalised, score, class)"
    )
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    nms_iou: float = Field(default=0.5, ge=0, le=1)
    top_k: int = Field(default=100, gt=0)


class EventRule(_Strict):
    event: str = Field(min_length=1, description="event name raised")
    labels: list[str] = Field(min_length=1, description="labels that trigger it")
    min_score: float = Field(default=0.5, ge=0, le=1)
    zone: list[tuple[float, float]] | None = Field(
        default=None, description="polygon in normalised image coordinates; None = whole frame"
    )
    min_duration_s: float = Field(default=0.0, ge=0)

    @field_validator("zone")
    @classmethod
    def _zone_polygon(cls, v: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if v is not None and len(v) < 3:
            raise ValueError(f"zone polygon needs at least 3 points, got {len(v)}")
        return v


class CostProfile(_Strict):
    ms_per_frame: float = Field(gt=0, description="compute per frame on this target")
    mem_mb: float = Field(gt=0, description="memory to hold the model once")
    measured: bool = Field(default=False, description="measured here, not estimated")


class EngineEntry(_Strict):
    target: str = Field(description="e.g. gpu-sm87")
    gpu_arch: str = Field(description="e.g. sm87")
    tensorrt: str = Field(description="TensorRT version the engine was built with")
    precision: Literal["fp32", "fp16", "int8"]
    file: str = Field(description="path inside the package")


class Golden(_Strict):
    input: str = Field(default="golden/input.npy", description="path inside the package")
    output: str = Field(default="golden/output.npy", description="path inside the package")
    atol: float = Field(default=1e-3, ge=0)
    rtol: float = Field(default=1e-3, ge=0)


class Lineage(_Strict):
    dataset_version: str | None = None
    training_task: str | None = None
    backbone: str | None = None
    parent: str | None = Field(default=None, description="version this was trained from")
    params: dict[str, Any] = Field(default_factory=dict)


class FileEntry(_Strict):
    sha256: Sha256Hex
    size: int = Field(ge=0)


class Signature(_Strict):
    key_id: str = Field(min_length=8, description="first 16 hex of sha256(public key)")
    value: str = Field(min_length=1, description="base64 ed25519 signature")


class Manifest(_Strict):
    """The signed description of an algorithm package."""

    schema_: Literal["citybrain.manifest/1"] = Field(default="citybrain.manifest/1", alias="schema")
    id: Ident
    version: SemVer
    name: str = ""
    description: str = ""
    task: Task
    labels: list[str] = Field(min_length=1)
    model: str = Field(default="model.onnx", description="ONNX file inside the package")
    input: InputSpec
    postprocess: Postprocess
    event_rules: list[EventRule] = Field(default_factory=list)
    scenes: list[str] = Field(default_factory=list, description="scene types it applies to")
    detects: list[str] = Field(default_factory=list, description="events/objects it detects")
    fps: float = Field(default=2.0, gt=0, description="rate it should run at per stream")
    cost: dict[str, CostProfile] = Field(default_factory=dict, description="target -> cost")
    engines: list[EngineEntry] = Field(default_factory=list)
    golden: Golden = Field(default_factory=Golden)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    embedding_summary: str | None = Field(
        default=None, description="npy file of training-set embedding centroids (novelty)"
    )
    files: dict[str, FileEntry] = Field(description="every file in the package except manifest")
    created_at: datetime = Field(default_factory=utcnow)
    signature: Signature | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"labels must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _files_cover_references(self) -> Manifest:
        refs = [self.model, self.golden.input, self.golden.output]
        refs += [e.file for e in self.engines]
        if self.embedding_summary:
            refs.append(self.embedding_summary)
        for path in list(self.files) + refs:
            check_member_path(path)
        missing = [r for r in refs if r not in self.files]
        if missing:
            raise ValueError(f"files referenced but not listed with a hash: {missing}")
        for rule in self.event_rules:
            unknown = [lbl for lbl in rule.labels if lbl not in self.labels]
            if unknown:
                raise ValueError(f"event rule {rule.event!r} names unknown labels {unknown}")
        return self

    def signing_bytes(self) -> bytes:
        """Canonical bytes the signature covers: everything but ``signature``."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"signature"})
        return canonical_json(body)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_member_path(path: str) -> str:
    """Reject absolute paths, ``..``, backslashes and empty parts."""
    p = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or p.is_absolute()
        or any(part in ("..", "", ".") for part in path.split("/"))
    ):
        raise UnsafePath(f"unsafe path in package: {path!r}")
    return path


def key_id(public_key_raw: bytes) -> str:
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def verify_manifest_signature(manifest: Manifest, public_key_raw: bytes) -> None:
    """Check ``manifest.signature`` against the pinned ed25519 public key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if manifest.signature is None:
        raise SignatureInvalid(f"{manifest.id} {manifest.version}: package is not signed")
    expected = key_id(public_key_raw)
    if manifest.signature.key_id != expected:
        raise SignatureInvalid(
            f"{manifest.id} {manifest.version}: signed by key {manifest.signature.key_id}, "
            f"pinned key is {expected}"
        )
    try:
        sig = base64.b64decode(manifest.signature.value, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(sig, manifest.signing_bytes())
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(
            f"{manifest.id} {manifest.version}: signature does not verify"
        ) from None


def verify_announcement(
    announcement: Announcement,
    public_key_raw: bytes,
    *,
    now: datetime | None = None,
    previous: Announcement | None = None,
) -> Announcement:
    """Trust an announcement only if signed by the pinned key, not expired
    (freeze attack) and not issued before ``previous`` (replay / rollback of
    metadata). Raises :class:`SignatureInvalid` or :class:`StaleMetadata`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    a = announcement.algorithm
    if not announcement.signature:
        raise SignatureInvalid(f"announcement for {a}: not signed")
    try:
        sig = base64.b64decode(announcement.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(sig, announcement.signing_bytes())
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(f"announcement for {a}: signature does not verify") from None
    now = now or utcnow()
    if announcement.expires_at <= now:
        raise StaleMetadata(
            f"announcement for {a} expired at {announcement.expires_at.isoformat()} "
            f"(now {now.isoformat()})"
        )
    if previous is not None and announcement.issued_at < previous.issued_at:
        raise StaleMetadata(
            f"announcement for {a} issued {announcement.issued_at.isoformat()} is older than "
            f"the one already accepted ({previous.issued_at.isoformat()})"
        )
    return announcement


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        raise PackageInvalid(f"manifest invalid: {_first_error(e)}") from None


def verify_package_dir(root: Path, public_key_raw: bytes) -> Manifest:
    """Verify an unpacked package: signature, then every file's size and hash,
    and that no file is present that the manifest does not list."""
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageInvalid(f"no {MANIFEST_NAME} in package")
    manifest = load_manifest(manifest_path.read_bytes())
    verify_manifest_signature(manifest, public_key_raw)
    present = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    } - {MANIFEST_NAME}
    extra = sorted(present - set(manifest.files))
    if extra:
        raise HashMismatch(f"files not listed in the signed manifest: {extra}")
    for rel, entry in manifest.files.items():
        f = root / rel
        if f.is_symlink() or not f.is_file():
            raise HashMismatch(f"{rel}: missing from package")
        if f.stat().st_size != entry.size:
            raise HashMismatch(f"{rel}: size {f.stat().st_size} != manifest {entry.size}")
        if sha256_file(f) != entry.sha256:
            raise HashMismatch(f"{rel}: sha256 differs from manifest")
    return manifest


# ---------------------------------------------------------------------------
# Package archive: an uncompressed tar of manifest.json + listed files
# ---------------------------------------------------------------------------

MAX_PACKAGE_MEMBERS = 1000


def write_package_archive(src_dir: Path, dest: Path) -> None:
    """Pack a package directory deterministically (sorted, mtime 0, root owner)."""
    src_dir = Path(src_dir)
    files = sorted(p.relative_to(src_dir).as_posix() for p in src_dir.rglob("*") if p.is_file())
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            check_member_path(rel)
            info = tarfile.TarInfo(rel)
            info.size = (src_dir / rel).stat().st_size
            info.mtime = 0
            info.mode = 0o644
            with open(src_dir / rel, "rb") as f:
                tar.addfile(info, f)


def extract_package_archive(archive: Path | bytes, dest: Path) -> None:
    """Unpack safely: only regular files with safe relative paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        opened = (
            tarfile.open(fileobj=io.BytesIO(archive), mode="r:")
            if isinstance(archive, bytes)
            else tarfile.open(archive, mode="r:")
        )
        with opened as tar:
            members = tar.getmembers()
            if len(members) > MAX_PACKAGE_MEMBERS:
                raise PackageInvalid(
                    f"package has {len(members)} members (max {MAX_PACKAGE_MEMBERS})"
                )
            for m in members:
                if m.isdir():
                    check_member_path(m.name.rstrip("/"))
                    continue
                if not m.isfile():
                    raise UnsafePath(f"package member {m.name!r} is not a regular file")
                check_member_path(m.name)
                target = dest / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                fobj = tar.extractfile(m)
                assert fobj is not None
                with open(target, "wb") as out:
                    while chunk := fobj.read(1 << 20):
                        out.write(chunk)
    except tarfile.TarError as e:
        raise PackageInvalid(f"package archive unreadable: {e}") from None


__all__ = [
    "MANIFEST_NAME",
    "MESSAGE_MODELS",
    "PREFIX",
    "REASON_CODES",
    "Announcement",
    "ArtifactRef",
    "Assignment",
    "ChunkReplyHeader",
    "ChunkRequest",
    "CostProfile",
    "DesiredState",
    "Detection",
    "DeviceStatus",
    "EngineEntry",
    "Event",
    "EventRule",
    "FileEntry",
    "Golden",
    "HardSample",
    "HardSampleReceipt",
    "HardwareProfile",
    "HashMismatch",
    "InputSpec",
    "Lineage",
    "LoadedModel",
    "Manifest",
    "MessageInvalid",
    "OutboxState",
    "PackageInvalid",
    "Postprocess",
    "Preprocess",
    "ProtocolError",
    "ReasonCode",
    "ReportedState",
    "Schedule",
    "SchemaVersionError",
    "Signature",
    "SignatureInvalid",
    "StaleMetadata",
    "StreamHealth",
    "Task",
    "Topics",
    "UnsafePath",
    "canonical_json",
    "check_member_path",
    "decode",
    "encode",
    "extract_package_archive",
    "key_id",
    "load_manifest",
    "reason_code_for",
    "semver_key",
    "sha256_file",
    "utcnow",
    "verify_announcement",
    "verify_manifest_signature",
    "verify_package_dir",
    "write_package_archive",
]
