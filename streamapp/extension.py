"""``StreamApp``: mounts streamapp on a Flask app, ours or a host's (SPEC §1, §7)."""

from __future__ import annotations

import functools
import logging
import typing as t

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import jsonify

from . import accounts
from . import api
from . import assets
from . import auth
from . import cli
from . import cors
from . import demo
from . import health
from . import metrics_view
from . import multiplex
from . import openapi
from . import retention
from . import serving
from . import stream
from . import sweeper
from .auth import owner_or_admin
from .config import ConfigError
from .config import Settings
from .config import load_settings
from .cursor import Cursors
from .db import Database
from .errors import problem
from .hub import Hub
from .producer import Producer
from .redact import Redactor
from .state import EXTENSION_KEY
from .state import Authorize
from .state import State
from .tickets import Tickets
from .token_cache import TokenCache

log = logging.getLogger(__name__)


def _handle(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    body, status, headers = problem(exc)
    if status == 500:
        log.error("unhandled error", exc_info=exc)
    return jsonify(body), status, headers


# Once, at import: Flask refuses setup calls on a blueprint already registered
# on an app, and one process may build several apps (tests, several hosts).
for _bp in (api.bp, stream.bp, multiplex.bp, health.bp, metrics_view.bp, auth.bp, openapi.bp, assets.bp, demo.bp):
    _bp.register_error_handler(Exception, _handle)


def _background(db: Database, settings: Settings) -> list[t.Callable[[], None]]:
    """The loops each worker's hub runs beside its own (issue 13): sweeper, retention."""
    loops: list[t.Callable[[], None]] = []
    if settings.execution_timeout_s is not None:
        loops.append(functools.partial(sweeper.run_forever, db, settings.execution_timeout_s))
    if settings.retention_s is not None:
        loops.append(functools.partial(retention.run_forever, db, settings.retention_s))
    return loops


class StreamApp:
    """The Flask extension: ``StreamApp(app)`` or ``ext = StreamApp(); ext.init_app(app)``.

    Per-app state lives in ``app.extensions["streamapp"]``, never on this object.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        settings: Settings | None = None,
        url_prefix: str = "/api/v0",
        authorize: Authorize | None = None,
    ) -> None:
        self.settings = settings
        self.url_prefix = url_prefix
        self.authorize = authorize
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, own_error_pages: bool = False) -> None:
        """Register blueprints, error handlers, CLI groups, Flask-Login hooks and teardown.

        :raises ConfigError: invalid settings, or no database configured.
        """
        settings = self.settings or load_settings()
        if not settings.database_url:
            raise ConfigError(["DATABASE_URL is required (python app.py starts an embedded PostgreSQL)"])
        db = Database(settings.database_url, settings.pool_size)
        own_users = getattr(app, "login_manager", None) is None
        # Every appended event is redacted before it is stored (SPEC §7).
        redactor = Redactor(settings.redact_keys)
        secret_key = settings.secret_key or app.secret_key
        # Bearer tokens are remembered for a heartbeat; revocations reach it through the hub.
        tokens = TokenCache(settings.heartbeat_s) if own_users else None
        hub = Hub(
            db,
            t.cast(str, settings.listen_url),
            listen=settings.notify,
            default_poll_ms=settings.poll_ms,
            max_concurrent_replays=settings.max_concurrent_replays,
            recent_budget=settings.recent_frames_bytes,
            # Revoked credentials end their streams within one heartbeat (SPEC §7).
            maintenance_s=settings.heartbeat_s,
            revoked_check=accounts.revoked if own_users else None,
            background=_background(db, settings),
            auth_changes=(accounts.AUTH_CHANNEL, tokens.invalidate) if tokens is not None else None,
        )
        state = State(
            settings=settings,
            db=db,
            producer=Producer(
                db,
                notify=settings.notify,
                max_event_bytes=settings.max_event_bytes,
                redact=redactor,
                max_json_depth=settings.max_json_depth,
                appended=hub.topics.appended,  # this worker's streams get its own appends from memory
            ),
            tickets=Tickets(secret_key, settings.ticket_ttl_s) if secret_key else None,
            cursors=Cursors(secret_key) if secret_key else None,
            redactor=redactor,
            hub=hub,
            token_cache=tokens,
            authorize=self.authorize or owner_or_admin,
            own_users=own_users,
            url_prefix=self.url_prefix,
        )
        app.extensions[EXTENSION_KEY] = state
        if state.hub.background:
            # The hub starts lazily (first stream, /readyz); background jobs must not wait for
            # one, so any request of a worker starts it there, never in gunicorn's master.
            app.before_request(state.hub.start)
        if own_users:
            app.secret_key = app.secret_key or settings.secret_key
            # Flask-Login's remember-me cookie is as good as a session: same flags (SPEC §7).
            app.config.update(
                SESSION_COOKIE_HTTPONLY=True,
                SESSION_COOKIE_SAMESITE="Lax",
                SESSION_COOKIE_SECURE=not settings.development,
                REMEMBER_COOKIE_HTTPONLY=True,
                REMEMBER_COOKIE_SAMESITE="Lax",
                REMEMBER_COOKIE_SECURE=not settings.development,
            )
        auth.init_login(app, own_users)
        cors.init_cors(app, settings.cors_origins, self.url_prefix)
        blueprints: list[tuple[Blueprint, str | None]] = [
            (api.bp, self.url_prefix),
            (stream.bp, self.url_prefix),
            (multiplex.bp, self.url_prefix),
            (openapi.bp, self.url_prefix),
            (health.bp, None),
            (metrics_view.bp, None),
            # /static/streamapp.js in every app, a host's too (SPEC §6).
            (assets.bp, None),
        ]
        if own_users:
            blueprints.append((auth.bp, self.url_prefix))
        if settings.development and own_users and own_error_pages:
            # The demo page claims `/`: only in development, and only on the standalone
            # app (create_app), never over a host's own home page (SPEC §6).
            blueprints.append((demo.bp, None))
        for bp, prefix in blueprints:
            app.register_blueprint(bp, url_prefix=prefix)
        if own_error_pages:
            app.register_error_handler(Exception, _handle)
        for group in cli.GROUPS:
            app.cli.add_command(group)
        serving.warn_if_streams_block()
