"""The city knowledge graph: ontology (scene, object, event, algorithm, camera, zone,
device, hardware target), a typed networkx graph with secondary indexes, scene context
of cameras (operator-set or inferred), applicability reasoning with explanations,
operator policies, persistence in the catalog database, and export as a
``citybrain.schedule-instance/1`` document for the scheduler.

Exception tree (``GraphError`` is a ``ValueError``; ``field`` names what was wrong)::

    GraphError
    ├── UnknownNode     a referenced camera/scene/event/zone/... does not exist
    ├── DuplicateNode   an id already used by a node of the same type
    ├── InvalidEdge     edge type not allowed between these node types, bad edge data
    ├── ZoneCycle       the zone hierarchy would contain a cycle
    ├── PolicyError     a policy naming unknown zones/events/cameras/devices, bad window
    └── StaleGraph      the stored graph changed since it was loaded (save refused)
"""

from __future__ import annotations

from knowledge_graph._errors import (
    DuplicateNode,
    GraphError,
    InvalidEdge,
    PolicyError,
    StaleGraph,
    UnknownNode,
    ZoneCycle,
)
from knowledge_graph._explain import Explanation, Reason, explain
from knowledge_graph._graph import (
    Applicable,
    CityGraph,
    Justification,
    SceneClassifier,
    SceneLink,
    node_key,
)
from knowledge_graph._instance import (
    EXCLUSIONS_EXTENSION,
    INSTANCE_SCHEMA,
    PINS_EXTENSION,
    export_extensions,
    export_instance,
    import_instance,
)
from knowledge_graph._ontology import (
    EDGE_RULES,
    EdgeType,
    NodeType,
    OntologyDoc,
    SceneSource,
    parse_ontology,
    seed_ontology,
)
from knowledge_graph._policy import (
    Exclusion,
    HourWindow,
    Pin,
    Policy,
    Weekday,
    parse_days,
    parse_hours,
    zone_matches,
)


def __getattr__(name: str):  # lazy: sqlalchemy only when persistence is used
    if name in ("load", "save", "stored_revision"):
        from knowledge_graph import _persist

        return getattr(_persist, name)
    raise AttributeError(f"module 'knowledge_graph' has no attribute {name!r}")


__all__ = [
    "EDGE_RULES",
    "EXCLUSIONS_EXTENSION",
    "INSTANCE_SCHEMA",
    "PINS_EXTENSION",
    "Applicable",
    "CityGraph",
    "DuplicateNode",
    "EdgeType",
    "Exclusion",
    "Explanation",
    "GraphError",
    "HourWindow",
    "InvalidEdge",
    "Justification",
    "NodeType",
    "OntologyDoc",
    "Pin",
    "Policy",
    "PolicyError",
    "Reason",
    "SceneClassifier",
    "SceneLink",
    "SceneSource",
    "StaleGraph",
    "UnknownNode",
    "Weekday",
    "ZoneCycle",
    "explain",
    "export_extensions",
    "export_instance",
    "import_instance",
    "load",
    "node_key",
    "parse_days",
    "parse_hours",
    "parse_ontology",
    "save",
    "seed_ontology",
    "stored_revision",
    "zone_matches",
]
