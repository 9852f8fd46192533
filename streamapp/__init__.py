"""streamapp: real-time execution progress over Server-Sent Events, on Flask and PostgreSQL."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from flask import Flask

from .chunks import ChunkPublisher
from .config import Settings
from .config import load_settings
from .extension import StreamApp
from .producer import AppendResult
from .producer import Producer
from .producer import append_events
from .producer import create_execution

__all__ = [
    "AppendResult",
    "ChunkPublisher",
    "Producer",
    "Settings",
    "StreamApp",
    "append_events",
    "create_app",
    "create_execution",
    "load_settings",
]


def create_app(config: Settings | Mapping[str, t.Any] | None = None) -> Flask:
    """Build the standalone app: a ready ``Settings``, a mapping of overrides, or the environment.

    :raises ConfigError: naming every invalid setting.
    """
    settings = config if isinstance(config, Settings) else load_settings(**dict(config or {}))
    app = Flask("streamapp")
    StreamApp(settings=settings).init_app(app, own_error_pages=True)
    return app
