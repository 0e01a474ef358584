"""Node and edge types, the table of allowed edges, id rules and the seed ontology."""

from __future__ import annotations

import enum
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowledge_graph._errors import GraphError, InvalidEdge

SEED_PATH = Path(__file__).with_name("seed_ontology.json")


class NodeType(str, enum.Enum):
    SCENE = "scene"
    OBJECT = "object"
    EVENT = "event"
    ALGORITHM = "algorithm"
    CAMERA = "camera"
    ZONE = "zone"
    DEVICE = "device"
    TARGET = "target"


class EdgeType(str, enum.Enum):
    IN_ZONE = "in_zone"  # camera -> zone
    SEES = "sees"  # camera -> scene  {source, confidence, confirmed, rejected}
    MAY_HAVE = "may_have"  # scene -> event  {source}
    INVOLVES = "involves"  # event -> object
    DETECTS = "detects"  # algorithm -> event | object
    APPLIES_TO = "applies_to"  # algorithm -> scene
    REACHES = "reaches"  # device -> camera
    RUNS_ON = "runs_on"  # algorithm -> target  {ms_per_frame, mem_mb}
    PART_OF = "part_of"  # zone -> zone (child -> parent)
    HAS_TARGET = "has_target"  # device -> target


N = NodeType
#: edge type -> (allowed source node types, allowed destination node types)
EDGE_RULES: dict[EdgeType, tuple[frozenset[NodeType], frozenset[NodeType]]] = {
    EdgeType.IN_ZONE: (frozenset({N.CAMERA}), frozenset({N.ZONE})),
    EdgeType.SEES: (frozenset({N.CAMERA}), frozenset({N.SCENE})),
    EdgeType.MAY_HAVE: (frozenset({N.SCENE}), frozenset({N.EVENT})),
    EdgeType.INVOLVES: (frozenset({N.EVENT}), frozenset({N.OBJECT})),
    EdgeType.DETECTS: (frozenset({N.ALGORITHM}), frozenset({N.EVENT, N.OBJECT})),
    EdgeType.APPLIES_TO: (frozenset({N.ALGORITHM}), frozenset({N.SCENE})),
    EdgeType.REACHES: (frozenset({N.DEVICE}), frozenset({N.CAMERA})),
    EdgeType.RUNS_ON: (frozenset({N.ALGORITHM}), frozenset({N.TARGET})),
    EdgeType.PART_OF: (frozenset({N.ZONE}), frozenset({N.ZONE})),
    EdgeType.HAS_TARGET: (frozenset({N.DEVICE}), frozenset({N.TARGET})),
}


class SceneSource(str, enum.Enum):
    """Where a camera's scene came from."""

    OPERATOR = "operator"
    INFERRED = "inferred"


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_id(value: object, what: str) -> str:
    """An identifier: 1-128 letters, digits, '_', '.', '-', starting with a letter/digit."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise GraphError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_', '.', '-' "
            "starting with a letter or digit",
            field=what,
        )
    return value


def check_zone_path(value: object) -> str:
    """A zone path ``city/district/street``: identifiers joined by '/'."""
    if not isinstance(value, str) or not value or len(value) > 512:
        raise GraphError(f"invalid zone path {value!r}", field="zone")
    for part in value.split("/"):
        if not _ID_RE.match(part):
            raise GraphError(
                f"invalid zone path {value!r}: segment {part!r} must be 1-128 letters, "
                "digits, '_', '.', '-' (no empty segments, no glob characters)",
                field="zone",
            )
    return value


def check_node_id(ntype: NodeType, value: object) -> str:
    if ntype is NodeType.ZONE:
        return check_zone_path(value)
    return check_id(value, f"{ntype.value} id")


def check_edge_types(etype: EdgeType, src_type: NodeType, dst_type: NodeType) -> None:
    srcs, dsts = EDGE_RULES[etype]
    if src_type not in srcs or dst_type not in dsts:
        allowed = f"{'|'.join(sorted(t.value for t in srcs))} -> {'|'.join(sorted(t.value for t in dsts))}"
        raise InvalidEdge(
            f"edge {etype.value!r} cannot link a {src_type.value} to a {dst_type.value} "
            f"(allowed: {allowed})",
            field="edge",
        )


# ---------------------------------------------------------------------------
# Ontology documents (the seed file and operator extensions share this format)
# ---------------------------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventSpec(_Doc):
    involves: list[str] = Field(default_factory=list, description="objects the event involves")
    description: str = ""


class SceneSpec(_Doc):
    may_have: list[str] = Field(default_factory=list, description="events that may happen")
    description: str = ""


class OntologyDoc(_Doc):
    """``citybrain.ontology/1``: objects, events (+ objects involved), scenes (+ events),
    hardware targets. Names referenced must be defined in the same document or already be
    in the graph it is merged into."""

    schema_: Literal["citybrain.ontology/1"] = Field(default="citybrain.ontology/1", alias="schema")
    objects: dict[str, str] = Field(default_factory=dict, description="name -> description")
    events: dict[str, EventSpec] = Field(default_factory=dict)
    scenes: dict[str, SceneSpec] = Field(default_factory=dict)
    targets: list[str] = Field(default_factory=list)


def parse_ontology(data: bytes | str | dict, *, source: str = "ontology") -> OntologyDoc:
    """Parse an ontology document; errors name the file (``source``) and the field."""
    try:
        raw = json.loads(data) if isinstance(data, bytes | str) else data
    except json.JSONDecodeError as e:
        raise GraphError(f"{source}: not valid JSON: {e}", field=source) from e
    try:
        return OntologyDoc.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise GraphError(f"{source}: {loc}: {err['msg']}", field=loc) from e


@lru_cache(maxsize=1)
def seed_ontology() -> OntologyDoc:
    """The seed ontology shipped with the package (common city scenes and events)."""
    return parse_ontology(SEED_PATH.read_bytes(), source=str(SEED_PATH.name))
