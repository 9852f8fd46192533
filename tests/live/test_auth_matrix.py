"""Who may do what: every endpoint × every kind of caller, over a live gunicorn (SPEC §2, §7; issue 6).

Two tables, one expected status per cell. The execution endpoints run once per
execution kind (workflows, agents, tasks): a ticket names its kind, and every
kind has its own URL. The other endpoints do not depend on a kind.

Tickets are sent as ``?ticket=`` on every endpoint, since that is the only
place a client ever puts one: outside a stream a ticket is no credential at
all (401 alone; beside another user's token it is ignored, and the list
endpoint, which takes no unknown query parameters, answers 400). On a stream,
a ticket beside another user's credentials is refused (the ``reused``
column, 401).

Login and logout need no credential and ignore any: login (with the owner's
password) answers 200 and logout 204 to every caller. Every cell that sends a
session cookie sends a copy of it, so a login or logout in one cell never
changes the caller of the next.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

import pytest
import requests

from streamapp import accounts
from streamapp.tickets import Tickets
from tests.conftest import SECRET
from tests.conftest import Account
from tests.conftest import AuthActions
from tests.conftest import LiveServer

pytestmark = pytest.mark.live

WARNING = {"type": "warning", "data": {"code": "c", "message": "m"}}
KINDS = ("workflow", "agent", "task")

CALLERS = (
    "anonymous",
    "owner_session",
    "owner_read",
    "owner_publish",
    "other_user",
    "admin",
    "revoked_token",
    "disabled_token",
    "disabled_session",
    "expired_ticket",
    "other_exec_ticket",
    "reused_ticket",
)

#: endpoint of one execution kind -> expected status for each caller, in the order of CALLERS.
KIND_EXPECTED: dict[str, tuple[int, ...]] = {
    #                  anon sess read publ other admin revok distk disse expir other reuse
    "create": (401, 201, 403, 201, 201, 201, 401, 401, 401, 401, 401, 201),
    "get": (401, 200, 200, 200, 404, 200, 401, 401, 401, 401, 401, 404),
    "list": (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 401, 400),
    "append": (401, 201, 403, 201, 404, 201, 401, 401, 401, 401, 401, 404),
    "chunks": (401, 202, 403, 202, 404, 202, 401, 401, 401, 401, 401, 404),
    "stream_ticket": (401, 201, 201, 201, 404, 201, 401, 401, 401, 401, 401, 404),
    # Every cell cancels an execution of its own (_request): a 200 ends the one it names.
    "cancel": (401, 200, 403, 200, 404, 200, 401, 401, 401, 401, 401, 404),
    # reused: B's token carrying A's ticket is refused (issue 6). Without credentials the server
    # cannot tell who holds a ticket, which is why tickets live 60 s and name one execution.
    "stream": (401, 200, 200, 200, 404, 200, 401, 401, 401, 401, 401, 401),
    # The same two for a multiplexed stream listing the cell's execution (SPEC §5.6): a ticket of
    # one execution never admits a list.
    "stream_tickets": (401, 201, 201, 201, 404, 201, 401, 401, 401, 401, 401, 404),
    "streams": (401, 200, 200, 200, 404, 200, 401, 401, 401, 401, 401, 401),
}
#: endpoint of no kind -> expected status for each caller.
EXPECTED: dict[str, tuple[int, ...]] = {
    #                  anon sess read publ other admin revok distk disse expir other reuse
    "catalog": (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 401, 200),
    "login": (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "logout": (204, 204, 204, 204, 204, 204, 204, 204, 204, 204, 204, 204),
    "tokens_list": (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 401, 200),
    "tokens_create": (401, 201, 403, 403, 403, 403, 401, 401, 401, 401, 401, 403),
    "tokens_delete": (401, 204, 403, 204, 404, 204, 401, 401, 401, 401, 401, 404),
    # The API's description reveals nothing about anyone's data: open to every caller.
    "openapi": (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
}
CELLS = [
    pytest.param(endpoint, kind, caller, status, id=f"{endpoint}-{kind}-{caller}")
    for endpoint, statuses in KIND_EXPECTED.items()
    for kind in KINDS
    for caller, status in zip(CALLERS, statuses, strict=True)
] + [
    pytest.param(endpoint, None, caller, status, id=f"{endpoint}-{caller}")
    for endpoint, statuses in EXPECTED.items()
    for caller, status in zip(CALLERS, statuses, strict=True)
]


@dataclasses.dataclass
class World:
    server: LiveServer
    auth: AuthActions
    owner: Account
    other: Account
    admin: Account
    owner_read: str
    revoked: str
    disabled: Account
    #: kind -> (the owner's execution the cells use, another of the owner's executions)
    executions: dict[str, tuple[str, str]]
    session: requests.Session
    disabled_session: requests.Session

    def ticket(self, kind: str, exec_id: str) -> str:
        r = requests.post(
            self.server.api(f"/executions/{kind}s/{exec_id}/stream-ticket"), headers=self.owner.headers, timeout=10
        )
        assert r.status_code == 201, r.text
        return t.cast(str, r.json()["ticket"])


def _logged_in(server: LiveServer, account: Account) -> requests.Session:
    session = requests.Session()
    r = session.post(server.api("/auth/login"), json={"email": account.email, "password": account.password}, timeout=10)
    assert r.status_code == 200, r.text
    return session


@pytest.fixture(scope="module")
def world(server, auth, producer, db) -> t.Iterator[World]:
    owner, other, admin, disabled = auth.user(), auth.user(), auth.user(admin=True), auth.user()
    revoked = auth.token(owner, ["read", "publish"])
    session, disabled_session = _logged_in(server, owner), _logged_in(server, disabled)
    with db.transaction() as cur:
        accounts.revoke_token(cur, revoked)
        accounts.disable_user(cur, disabled.email)
    executions = {
        kind: t.cast(
            tuple[str, str],
            tuple(producer.create_execution(kind, "m", owner.user.get_id())["exec_id"] for _ in range(2)),
        )
        for kind in KINDS
    }
    yield World(
        server,
        auth,
        owner,
        other,
        admin,
        auth.token(owner, ["read"]),
        revoked,
        disabled,
        executions,
        session,
        disabled_session,
    )
    session.close()
    disabled_session.close()


def _copy(session: requests.Session) -> requests.Session:
    copy = requests.Session()
    copy.cookies.update(session.cookies)
    return copy


def _credentials(
    world: World, caller: str, kind: str
) -> tuple[requests.Session | None, dict[str, str], dict[str, str]]:
    """(session, headers, query parameters) a caller sends; a ticket names the cell's kind."""
    bearer = AuthActions.bearer
    exec_id, another_exec_id = world.executions[kind]
    if caller == "anonymous":
        return None, {}, {}
    if caller == "owner_session":
        return _copy(world.session), {}, {}
    if caller == "owner_read":
        return None, bearer(world.owner_read), {}
    if caller == "owner_publish":
        return None, world.owner.headers, {}
    if caller == "other_user":
        return None, world.other.headers, {}
    if caller == "admin":
        return None, world.admin.headers, {}
    if caller == "revoked_token":
        return None, bearer(world.revoked), {}
    if caller == "disabled_token":
        return None, world.disabled.headers, {}
    if caller == "disabled_session":
        return _copy(world.disabled_session), {}, {}
    if caller == "expired_ticket":
        # Signed with the server's key two minutes ago: a genuine ticket, expired.
        old = Tickets(SECRET, 60, clock=lambda: time.time() - 120)
        ticket, _ = old.issue(kind, exec_id, world.owner.user.get_id())
        return None, {}, {"ticket": ticket}
    if caller == "other_exec_ticket":
        return None, {}, {"ticket": world.ticket(kind, another_exec_id)}
    if caller == "reused_ticket":
        return None, world.other.headers, {"ticket": world.ticket(kind, exec_id)}
    raise AssertionError(caller)


#: endpoint -> (method, the app's URL rule under /api/v0); the coverage test checks it against the app.
ROUTES: dict[str, tuple[str, str]] = {
    "create": ("POST", "/executions/<segment>"),
    "get": ("GET", "/executions/<segment>/<exec_id>"),
    "list": ("GET", "/executions/<segment>"),
    "append": ("POST", "/executions/<segment>/<exec_id>/events"),
    "chunks": ("POST", "/executions/<segment>/<exec_id>/chunks"),
    "stream_ticket": ("POST", "/executions/<segment>/<exec_id>/stream-ticket"),
    "cancel": ("POST", "/executions/<segment>/<exec_id>/cancel"),
    "stream": ("GET", "/executions/<kind>/<exec_id>/stream"),
    "stream_tickets": ("POST", "/stream-tickets"),
    "streams": ("GET", "/streams"),
    "catalog": ("GET", "/events/catalog"),
    "login": ("POST", "/auth/login"),
    "logout": ("POST", "/auth/logout"),
    "tokens_list": ("GET", "/auth/tokens"),
    "tokens_create": ("POST", "/auth/tokens"),
    "tokens_delete": ("DELETE", "/auth/tokens/<prefix>"),
    "openapi": ("GET", "/openapi.json"),
}


#: The endpoints that take their executions as a list (SPEC §5.6), not in the path.
LISTING = ("stream_tickets", "streams")


def _body(world: World, endpoint: str) -> t.Any:
    return {
        "create": {"name": "matrix"},
        "append": {"events": [WARNING]},
        "chunks": {"text": "matrix"},
        "cancel": {"reason": "matrix"},
        "login": {"email": world.owner.email, "password": world.owner.password},
        "logout": {},
        "tokens_create": {"scopes": ["read"]},
        "tokens_delete": {},
    }.get(endpoint)


def _request(
    world: World, endpoint: str, caller: str, kind: str | None = None, exec_id: str | None = None
) -> requests.Response:
    kind = kind or "workflow"
    if exec_id is None and endpoint == "cancel":
        exec_id = _fresh_execution(world, kind)
    exec_id = exec_id or world.executions[kind][0]
    session, headers, params = _credentials(world, caller, kind)
    method, rule = ROUTES[endpoint]
    path = rule.replace("<segment>", f"{kind}s").replace("<kind>", f"{kind}s").replace("<exec_id>", exec_id)
    if "<prefix>" in path:
        # A fresh token of the owner's for every cell, so each revoke has something to revoke.
        path = path.replace("<prefix>", _fresh_prefix(world))
    body = _body(world, endpoint)
    if endpoint in LISTING:  # a multiplexed stream, or its ticket, of the cell's execution
        body = {"ids": [f"{kind}s/{exec_id}"]} if method == "POST" else None
        params = {**params, "ids": f"{kind}s/{exec_id}"} if method == "GET" else params
    send = session.request if session is not None else requests.request
    try:
        response = send(
            method,
            world.server.api(path),
            headers=headers,
            params=params,
            json=body,
            timeout=10,
            stream=True,
        )
        if response.status_code != 200 or endpoint not in ("stream", "streams"):
            response.content  # noqa: B018 (a live stream is only opened, never read to its end)
        response.close()
    finally:
        if session is not None:
            session.close()
    return response


def _fresh_execution(world: World, kind: str) -> str:
    url = world.server.api(f"/executions/{kind}s")
    r = requests.post(url, headers=world.owner.headers, json={"name": "m"}, timeout=10)
    assert r.status_code == 201, r.text
    return t.cast(str, r.json()["exec_id"])


def _fresh_prefix(world: World) -> str:
    return t.cast(str, accounts.token_prefix(world.auth.token(world.owner, ["read"])))


@pytest.mark.parametrize("endpoint, kind, caller, expected", CELLS)
def test_matrix(world, endpoint, kind, caller, expected):
    response = _request(world, endpoint, caller, kind)
    streaming = endpoint in ("stream", "streams") and expected == 200
    assert response.status_code == expected, "" if streaming else response.text
    if expected >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


# A ticket names its execution, so on any other stream it is refused (401), not 404: no such cell.
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "endpoint, caller",
    [(e, "other_user") for e in ("get", "append", "chunks", "stream_ticket", "stream", "cancel", *LISTING)]
    + [(e, "reused_ticket") for e in ("get", "append", "chunks", "stream_ticket", "cancel", "stream_tickets")],
)
def test_not_yours_and_does_not_exist_are_byte_identical(world, endpoint, caller, kind):
    theirs = _request(world, endpoint, caller, kind)
    missing = _request(world, endpoint, caller, kind, exec_id="no-such-execution")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    assert theirs.headers["Content-Type"] == missing.headers["Content-Type"]


def test_someone_elses_token_and_no_token_are_byte_identical(world):
    theirs = requests.delete(
        world.server.api(f"/auth/tokens/{_fresh_prefix(world)}"), headers=world.other.headers, json={}, timeout=10
    )
    missing = requests.delete(
        world.server.api("/auth/tokens/0123456789ab"), headers=world.other.headers, json={}, timeout=10
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
