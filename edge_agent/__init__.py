"""citybrain edge agent: the device side of the platform.

Installable with ``pip install citybrain[edge]`` alone; imports no torch,
fastapi, ray, sqlalchemy, redis, nor any other citybrain package.
``edge_agent.protocol`` is the wire contract every side imports (importing it
does not load the agent: the names below are resolved lazily). The agent is
:class:`Agent`, configured by :class:`AgentConfig` (built with ``load_config``);
its ``model_loader`` may return any :class:`RuntimeModel` (the base class of the
runtimes; ``run(frame)`` gives a :class:`RuntimeResult`) instead of a local one.

Exception tree (wire errors are ``edge_agent.protocol.ProtocolError``)::

    EdgeError
    ├── ConfigError
    ├── Superseded
    ├── FetchError
    │   └── ArtifactMismatch
    ├── CacheFull
    ├── ModelLoadError
    │   └── GoldenCheckFailed
    └── SourceError
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "edge_agent._agent",
    "AgentConfig": "edge_agent._config",
    "ArtifactMismatch": "edge_agent._errors",
    "CacheFull": "edge_agent._errors",
    "ConfigError": "edge_agent._errors",
    "EdgeError": "edge_agent._errors",
    "FetchError": "edge_agent._errors",
    "Fleet": "edge_agent._fleet",
    "GoldenCheckFailed": "edge_agent._errors",
    "JsonFormatter": "edge_agent._logging",
    "ModelLoadError": "edge_agent._errors",
    "ProcessFleet": "edge_agent._fleet",
    "RuntimeModel": "edge_agent._runtime",
    "RuntimeResult": "edge_agent._runtime",
    "SourceError": "edge_agent._errors",
    "Superseded": "edge_agent._errors",
    "detect_hardware": "edge_agent._hardware",
    "load_config": "edge_agent._config",
}


#: public name -> name in its module, where they differ (``protocol.LoadedModel`` is
#: the reported wire record; the runtime's base class is ``RuntimeModel`` here)
_RENAMED = {"RuntimeModel": "LoadedModel", "RuntimeResult": "Result"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), _RENAMED.get(name, name))


__all__ = [
    "Agent",
    "AgentConfig",
    "ArtifactMismatch",
    "CacheFull",
    "ConfigError",
    "EdgeError",
    "FetchError",
    "Fleet",
    "GoldenCheckFailed",
    "JsonFormatter",
    "ModelLoadError",
    "ProcessFleet",
    "RuntimeModel",
    "RuntimeResult",
    "SourceError",
    "Superseded",
    "__version__",
    "detect_hardware",
    "load_config",
]
