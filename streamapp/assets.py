"""``GET /static/streamapp.js``: the browser client, in every app (SPEC §6).

The standalone app (``Flask("streamapp")``) serves ``streamapp/static/`` at
``/static/`` anyway; a host app's ``/static/`` is its own folder, so this one
rule puts the browser client at the same address there too. Werkzeug tries a
rule without variables before ``/static/<path:filename>``, so it wins over the
host's folder for that one file only. Templates get its URL as
``{{ streamapp_js }}``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint
from flask import Response
from flask import has_request_context
from flask import send_from_directory
from flask import url_for

STATIC = Path(__file__).resolve().parent / "static"

bp = Blueprint("streamapp_assets", __name__)


@bp.get("/static/streamapp.js")
def streamapp_js() -> Response:
    """The browser client, at the address SPEC §6 names, in every environment."""
    return send_from_directory(STATIC, "streamapp.js", mimetype="text/javascript")


@bp.app_context_processor
def _script_url() -> dict[str, str]:
    # Templates, a host's too, can write <script src="{{ streamapp_js }}"> (examples/legacy_flask).
    return {"streamapp_js": url_for("streamapp_assets.streamapp_js")} if has_request_context() else {}
