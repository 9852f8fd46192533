"""Authentication and authorization for every endpoint (SPEC §7).

Flask-Login everywhere: a session cookie from ``POST /auth/login``, or an API
token in ``Authorization: Bearer``. In extension mode with a host
``LoginManager``, the host's users and ``current_user`` are used instead and
its ``authorize(user, execution)`` hook decides who reads what.
"""

from __future__ import annotations

import dataclasses
import typing as t

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import jsonify
from flask import request
from flask import session
from flask import url_for
from flask_login import LoginManager
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user
from flask_login.config import COOKIE_NAME

from . import accounts
from . import login_limits
from . import storage
from . import tickets
from . import token_cache
from .errors import BadRequest
from .errors import Forbidden
from .errors import NotAuthenticated
from .errors import NotFound
from .errors import Unavailable
from .exec_ids import EXEC_ID_PATTERN
from .inputs import authenticated_by_cookie
from .inputs import client_address
from .inputs import login_body
from .inputs import refuse_cross_site
from .inputs import require_json_body
from .schemas import TokenCreate
from .schemas import TokenCreated
from .schemas import TokenOut
from .slots import Reader
from .state import current_state

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

    from .storage import Execution

bp = Blueprint("streamapp_auth", __name__)
URL_TOKEN_PARAMS = ("token", "access_token", "api_key")


def owner_or_admin(user: t.Any, execution: Execution) -> bool:
    """The default authorization rule (SPEC §7): the owner, or an admin."""
    return _is_admin(user) or execution["owner_id"] == str(user.get_id())


def _is_admin(user: t.Any) -> bool:
    return bool(getattr(user, "is_admin", False))


def stream_reader(user: t.Any) -> Reader:
    """``user`` as a stream connect's single round trip sees them (``slots.open_stream``): under
    :func:`owner_or_admin` the database decides it too, as it takes the stream's slot."""
    default_rule = current_state().authorize is owner_or_admin
    return Reader(str(user.get_id()), any_owner=_is_admin(user), default_rule=default_rule)


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
    app.before_request(_bearer_user)


def _bearer_user() -> None:
    """Sign a bearer-token request in before Flask-Login looks, when Flask-Login would only ask the token.

    With no session user and no remember-me cookie, Flask-Login's loading ends in
    :func:`_load_token_user` anyway, after a session-protection hash and two signals
    nobody here listens to: on every API call and stream connect (issue 10). A
    request with a session keeps Flask-Login's order (the session user first).
    """
    environ = request.environ
    if "HTTP_AUTHORIZATION" not in environ or "_user_id" in session:
        return
    # Most bearer requests carry no cookie at all: nothing to parse for a remember-me one.
    if "HTTP_COOKIE" in environ and current_app.config.get("REMEMBER_COOKIE_NAME", COOKIE_NAME) in request.cookies:
        return
    # Where Flask-Login keeps the request's user; a bad token's is its anonymous user, as Flask-Login
    # would make it (and not after a second lookup of the same token).
    g._login_user = _load_token_user(request) or current_app.login_manager.anonymous_user()  # type: ignore[attr-defined]


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
    state = current_state()
    # The listener that carries revocations to the cache runs in the hub (issue 10).
    state.hub.start()

    def lookup() -> accounts.User | None:
        with state.db.autocommit() as cur:
            return accounts.authenticate_token(cur, token.strip())

    return token_cache.remember(state.token_cache, state.hub.trusts_notifications, token.strip(), lookup)


def require(scope: str) -> t.Any:
    """The current user, if authenticated with ``scope``.

    :raises NotAuthenticated: nobody is logged in.
    :raises Forbidden: the credential lacks ``scope``.
    """
    # The user itself, not Flask-Login's proxy: every attribute read through the proxy
    # looks the user up in the request context again.
    user = current_user._get_current_object()
    if user is None or not user.is_authenticated:
        raise NotAuthenticated()
    if scope not in getattr(user, "scopes", accounts.SCOPES):
        raise Forbidden(f"this token lacks the '{scope}' scope")
    return user


def refuse_token_in_url() -> None:
    """A long-lived token is never accepted in a URL (SPEC §7).

    That covers an API token passed where a ticket goes (``?ticket=sa_…``):
    it is recognized by the token format (:func:`accounts.token_prefix`).

    :raises BadRequest: saying how to get a stream ticket instead.
    """
    if not request.query_string:
        return  # most requests: nothing to parse
    name = next((name for name in URL_TOKEN_PARAMS if name in request.args), None)
    if name is None and any(accounts.token_prefix(value) is not None for value in request.args.getlist("ticket")):
        name = "ticket"
    if name is not None:
        raise BadRequest(
            f"do not put a token in the URL ('{name}='): send 'Authorization: Bearer <token>', "
            "or POST .../stream-ticket and pass the ticket as ?ticket="
        )


# Before anything else, authentication included, on every endpoint (issue 11).
bp.before_request(refuse_token_in_url)


def stream_user(kind: str, exec_id: str, ticket: str | None, *, renew: str | None = None) -> t.Any:
    """Who opens this stream: the session or bearer user with ``read``, or a ticket's user.

    With a ticket the stream acts as the user the ticket names, with the
    ``read`` scope only. Whoever holds a ticket gets exactly what it names, one
    execution's stream until ``expires_at``, never more and never as anyone
    else. The named user must still exist and be active, and when the ticket
    was asked for with an API token, that token must not be revoked. A request
    that also signs in (session cookie or bearer token) must sign in as that
    same user: B's credentials carrying A's ticket are refused (issue 6).

    :raises NotAuthenticated: no credential, or a bad, expired or other-execution
        ticket, one whose user is disabled or whose token is revoked, or one
        beside another user's credentials.
    :raises Forbidden: the credential lacks ``read``.
    """
    if ticket is None:
        return require("read")
    # ``renew``: where a new ticket comes from, when it is not the execution's own stream-ticket.
    renew = renew or url_for("streamapp_api.stream_ticket", segment=kind + "s", exec_id=exec_id)
    fetch_new = f"POST {renew} for a new one"
    issuer = current_state().tickets
    if issuer is None:
        raise NotAuthenticated("stream tickets need SECRET_KEY, and this server has none")
    try:
        claims = issuer.verify(ticket, kind=kind, exec_id=exec_id)
    except tickets.TicketError as exc:
        raise NotAuthenticated(f"{exc}: {fetch_new}") from None
    if getattr(current_user, "is_authenticated", False) and str(current_user.get_id()) != claims.user_id:
        raise NotAuthenticated("the stream ticket was issued to another user than the one this request signs in as")
    user = _ticket_user(claims)
    if user is None:
        raise NotAuthenticated(f"the stream ticket's user is disabled or its token was revoked: {fetch_new}")
    return user


def _ticket_user(claims: tickets.Claims) -> t.Any:
    """The active user a ticket names, as a read-only credential; ``None`` if gone or revoked."""
    state = current_state()
    if not state.own_users:
        # The host's users (extension mode): its LoginManager.user_loader, as for its
        # sessions. A host without one cannot vouch for the user: no ticket passes.
        load = current_app.login_manager.user_callback  # type: ignore[attr-defined]
        user = load(claims.user_id) if load is not None else None
        return user if user is not None and getattr(user, "is_active", True) else None
    if not claims.user_id.isdigit():
        return None
    with state.db.transaction() as cur:
        user = accounts.get_user(cur, int(claims.user_id))
        if user is None or not user.is_active:
            return None
        if claims.token_prefix is not None:
            _, revoked_tokens = accounts.revoked(cur, (), (claims.token_prefix,))
            if revoked_tokens:
                return None
    # The token prefix rides along so a revoke ends this stream as it ends the token's own.
    return dataclasses.replace(user, scopes=frozenset({"read"}), token_prefix=claims.token_prefix)


def issue_ticket(kind: str, exec_id: str, user: t.Any) -> tuple[str, str]:
    """A stream ticket for ``user`` on one execution, and its ``expires_at`` (ISO-8601 UTC).

    :raises Unavailable: the server has no secret key to sign tickets with.
    """
    issuer = current_state().tickets
    if issuer is None:
        raise Unavailable("stream tickets need SECRET_KEY, and this server has none", retry_after=3600)
    ticket, expires_at = issuer.issue(kind, exec_id, str(user.get_id()), getattr(user, "token_prefix", None))
    return ticket, tickets.isoformat(expires_at)


def visible_executions(cur: Cursor, entries: t.Sequence[str], user: t.Any) -> list[Execution]:
    """Look up every ``segment/exec_id`` entry in one query and check the user may read each, in order.

    :raises NotFound: any entry unknown, of another kind, or not visible (which one is not said).
    """
    wanted = [entry.partition("/")[::2] for entry in entries]
    if not all(EXEC_ID_PATTERN.fullmatch(exec_id) for _, exec_id in wanted):
        raise NotFound()
    found = storage.get_executions(cur, [exec_id for _, exec_id in wanted])
    authorize = current_state().authorize
    executions = []
    for segment, exec_id in wanted:
        execution = found.get(exec_id)
        if execution is None or execution["kind"] + "s" != segment or not authorize(user, execution):
            raise NotFound()
        executions.append(execution)
    return executions


def issue_list_ticket(digest: str, user: t.Any) -> tuple[str, str]:
    """A stream ticket for ``user`` on the multiplexed stream of one list (``cursor.list_digest``).

    :raises Unavailable: the server has no secret key to sign tickets with.
    """
    return issue_ticket(tickets.LIST_KIND, digest, user)


def visible_execution(cur: Cursor, kind: str, exec_id: str, user: t.Any) -> Execution:
    """Look an execution up and check the user may read it.

    :raises NotFound: unknown, or not visible to ``user`` (one answer for both).
    """
    # No stored id breaks the pattern; one with U+0000 would even make the query fail.
    execution = storage.get_execution(cur, kind, exec_id) if EXEC_ID_PATTERN.fullmatch(exec_id) else None
    if execution is None or not current_state().authorize(user, execution):
        raise NotFound()
    return execution


@bp.post("/auth/login")
def login() -> Response:
    refuse_cross_site()
    email, password = login_body()
    address, settings = client_address(), current_state().settings
    window_s = settings.login_window_s
    with current_state().db.transaction() as cur:
        # Counted in PostgreSQL, so the limits hold across workers (issue 6).
        login_limits.check(
            cur,
            email,
            address,
            max_failures=settings.login_max_failures,
            max_address_failures=settings.login_max_address_failures,
            window_s=window_s,
        )
        user = accounts.check_password(cur, email, password)
        if user is None:
            login_limits.record_failure(cur, email, address, window_s=window_s)
        else:
            login_limits.clear(cur, email)
    if user is None:
        raise NotAuthenticated("the email or password is wrong, or the account is disabled")
    login_user(user)
    return jsonify({"id": user.get_id(), "email": user.email, "is_admin": user.is_admin})


@bp.post("/auth/logout")
def logout() -> tuple[str, int]:
    if authenticated_by_cookie():
        refuse_cross_site()
    logout_user()
    return "", 204


# -- API tokens (issue 6) -------------------------------------------------------------------------

_token_out = TokenOut()


@bp.post("/auth/tokens")
def create_token() -> tuple[Response, int]:
    """Create a token for the logged-in user; the token is in this answer only.

    Only a session may: a token that could mint tokens would outlive its own
    revocation, and a ``read`` token could mint a ``publish`` one.
    """
    user = require("read")
    if not authenticated_by_cookie():
        raise Forbidden("create tokens from a logged-in session (POST /auth/login), not with a token")
    body = TokenCreate().load(require_json_body())
    with current_state().db.transaction() as cur:
        token, info = accounts.new_token(cur, user.id, body["scopes"])
    response = jsonify(TokenCreated().dump({"token": token, **dataclasses.asdict(info)}))
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("/auth/tokens")
def list_tokens() -> Response:
    """The caller's tokens, live and revoked, newest first; never a secret or a hash."""
    user = require("read")
    with current_state().db.transaction() as cur:
        infos = accounts.list_tokens(cur, user.id)
    return jsonify({"items": _token_out.dump(infos, many=True)})


@bp.delete("/auth/tokens/<prefix>")
def revoke_token(prefix: str) -> tuple[str, int]:
    """Revoke one of the caller's tokens by prefix; an admin may revoke anyone's.

    Someone else's token answers 404, as an unknown one does.
    """
    user = require("publish")
    if authenticated_by_cookie():
        refuse_cross_site()
    if not accounts.is_prefix(prefix):
        if accounts.token_prefix(prefix) is not None:
            raise BadRequest("put only the token's prefix in the URL, never the token itself")
        raise NotFound("no live token with that prefix")
    with current_state().db.transaction() as cur:
        accounts.revoke_token(cur, prefix, user_id=None if user.is_admin else user.id)
    return "", 204
