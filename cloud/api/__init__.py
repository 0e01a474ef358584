"""REST API (``/api/v1``) and web console of the control plane.

``create_app(settings=None) -> FastAPI`` builds the app; errors map to HTTP in
:mod:`cloud.api.errors`; tokens and roles in :mod:`cloud.api.tokens` and
:mod:`cloud.api.deps`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:  # lazy: `citybrain token` should not import FastAPI
    if name == "create_app":
        from cloud.api.main import create_app

        return create_app
    raise AttributeError(name)
