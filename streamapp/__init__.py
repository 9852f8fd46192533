"""streamapp: real-time execution progress over Server-Sent Events, on Flask and PostgreSQL.

The server's names are imported on first use, not here: a client-only install
(``pip install .`` without the ``server`` extra) has no Flask, gevent or
psycopg2, and ``import streamapp.client`` must work there (SPEC §6).
"""

from __future__ import annotations

import importlib
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from flask import Flask

    from .chunks import ChunkPublisher
    from .client import follow
    from .config import Settings
    from .config import load_settings
    from .errors import Conflict
    from .errors import Invalid
    from .errors import NotFound
    from .errors import TooLarge
    from .extension import StreamApp
    from .producer import AppendResult
    from .producer import Producer
    from .producer import append_events
    from .producer import cancel
    from .producer import create_execution

__all__ = [
    "AppendResult",
    "ChunkPublisher",
    "Conflict",
    "Invalid",
    "NotFound",
    "Producer",
    "Settings",
    "StreamApp",
    "TooLarge",
    "append_events",
    "cancel",
    "create_app",
    "create_execution",
    "follow",
    "load_settings",
]

# Public name -> the module that defines it.
_LAZY = {
    "AppendResult": "producer",
    "ChunkPublisher": "chunks",
    "Conflict": "errors",
    "Invalid": "errors",
    "NotFound": "errors",
    "TooLarge": "errors",
    "Producer": "producer",
    "Settings": "config",
    "StreamApp": "extension",
    "append_events": "producer",
    "cancel": "producer",
    "create_execution": "producer",
    "follow": "client",
    "load_settings": "config",
}


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamapp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def create_app(config: Settings | Mapping[str, t.Any] | None = None) -> Flask:
    """Build the standalone app: a ready ``Settings``, a mapping of overrides, or the environment.

    :raises ConfigError: naming every invalid setting.
    """
    from flask import Flask

    from .config import Settings
    from .config import load_settings
    from .extension import StreamApp
    from .sessions import SignedCookieSessions

    settings = config if isinstance(config, Settings) else load_settings(**dict(config or {}))
    app = Flask("streamapp")
    app.session_interface = SignedCookieSessions()
    StreamApp(settings=settings).init_app(app, own_error_pages=True)
    return app
