"""Errors of the knowledge graph (see the tree in the package docstring)."""

from __future__ import annotations


class GraphError(ValueError):
    """Base of every error the knowledge graph reports; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class UnknownNode(GraphError):
    """A referenced node (camera, scene, event, zone, ...) does not exist."""


class DuplicateNode(GraphError):
    """A node id is already used by another node of the same type."""


class InvalidEdge(GraphError):
    """An edge type that is not allowed between these node types, or bad edge data."""


class ZoneCycle(GraphError):
    """The zone hierarchy would contain a cycle."""


class PolicyError(GraphError):
    """A policy naming unknown zones/events/cameras/devices or with a bad window."""


class StaleGraph(GraphError):
    """The stored graph changed since it was loaded; saving would overwrite it."""
