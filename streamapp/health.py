"""``/healthz`` (process alive) and ``/readyz`` (database and listener healthy)."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from .state import current_state

bp = Blueprint("streamapp_health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = current_state()
    state.hub.start()  # the listener is started lazily, in the worker
    checks = {"database": state.db.ping(), "listener": state.hub.listener_healthy}
    ready = all(checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return jsonify(body), 200 if ready else 503
