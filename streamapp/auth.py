"""Authentication and authorization for every endpoint (SPEC §7).

Flask-Login everywhere: a session cookie from ``POST /auth/login``, or an API
token in ``Authorization: Bearer``. In extension mode with a host
``LoginManager``, the host's users and ``current_user`` are used instead and
its ``authorize(user, execution)`` hook decides who reads what.
"""

from __future__ import annotations

import typing as t

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import jsonify
from flask import request
from flask_login import LoginManager
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user

from . import accounts
from . import storage
from .errors import BadRequest
from .errors import Forbidden
from .errors import NotAuthenticated
from .errors import NotFound
from .state import current_state

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

bp = Blueprint("streamapp_auth", __name__)
URL_TOKEN_PARAMS = ("token", "access_token", "api_key")


def init_login(app: Flask, own_users: bool) -> None:
    """Install our Flask-Login loaders, unless the host app brings its own."""
    if not own_users:
        return
    manager = LoginManager()
    manager.init_app(app)
    manager.user_loader(_load_session_user)
    manager.request_loader(_load_token_user)
    manager.unauthorized_handler(_unauthorized)
    manager.session_protection = "basic"


def _unauthorized() -> t.NoReturn:
    raise NotAuthenticated()


def _load_session_user(user_id: str) -> accounts.User | None:
    if not user_id.isdigit():
        return None
    with current_state().db.transaction() as cur:
        user = accounts.get_user(cur, int(user_id))
    return user if user is not None and user.is_active else None


def _load_token_user(req: t.Any) -> accounts.User | None:
    header = req.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    with current_state().db.transaction() as cur:
        return accounts.authenticate_token(cur, token.strip())


def authenticated_by_cookie() -> bool:
    """Whether this request's user came from the session cookie (not a bearer token)."""
    return current_user.is_authenticated and getattr(current_user, "token_prefix", None) is None


def require(scope: str) -> t.Any:
    """The current user, if authenticated with ``scope``.

    :raises NotAuthenticated: nobody is logged in.
    :raises Forbidden: the credential lacks ``scope``.
    """
    user = current_user
    if user is None or not user.is_authenticated:
        raise NotAuthenticated()
    if scope not in getattr(user, "scopes", accounts.SCOPES):
        raise Forbidden(f"this token lacks the '{scope}' scope")
    return user


def refuse_token_in_url() -> None:
    """A long-lived token is never accepted in a URL (SPEC §7).

    :raises BadRequest: saying how to get a stream ticket instead.
    """
    for name in URL_TOKEN_PARAMS:
        if name in request.args:
            raise BadRequest(
                f"do not put a token in the URL ('{name}='): send 'Authorization: Bearer <token>', "
                "or POST .../stream-ticket and pass the ticket as ?ticket="
            )


def visible_execution(cur: Cursor, kind: str, exec_id: str, user: t.Any) -> dict[str, t.Any]:
    """Look an execution up and check the user may read it.

    :raises NotFound: unknown, or not visible to ``user`` (one answer for both).
    """
    execution = storage.get_execution(cur, kind, exec_id)
    if execution is None or not current_state().authorize(user, execution):
        raise NotFound()
    return execution


def require_json_body() -> t.Any:
    """The JSON body of a state-changing request.

    A cookie-authenticated request must be ``application/json`` so a cross-site
    form cannot forge it (SPEC §7).

    :raises Forbidden: a cookie-authenticated request that is not JSON.
    :raises BadRequest: a body that is not JSON.
    """
    if not request.is_json:
        if authenticated_by_cookie():
            raise Forbidden("state-changing requests must be sent as Content-Type: application/json")
        raise BadRequest("send the body as JSON with Content-Type: application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the body is not valid JSON")
    return body


@bp.post("/auth/login")
def login() -> Response:
    if not request.is_json:
        raise Forbidden("log in with a JSON body and Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("email"), str) or not isinstance(
        body.get("password"), str
    ):
        raise BadRequest("send {\"email\": ..., \"password\": ...}")
    with current_state().db.transaction() as cur:
        user = accounts.check_password(cur, body["email"], body["password"])
    if user is None:
        raise NotAuthenticated("the email or password is wrong, or the account is disabled")
    login_user(user)
    return jsonify({"id": user.get_id(), "email": user.email, "is_admin": user.is_admin})


@bp.post("/auth/logout")
def logout() -> tuple[str, int]:
    logout_user()
    return "", 204
