"""Who may do what: every endpoint × every kind of caller, over a live gunicorn (SPEC §2, §7; issue 6).

One table, one expected status per cell. The chunks endpoint has its own
tests (tests/test_chunks.py) and is left out here.

Tickets are sent as ``?ticket=`` on every endpoint, since that is the only
place a client ever puts one: outside a stream a ticket is no credential at
all (401 alone; beside another user's token it is ignored, and the list
endpoint, which takes no unknown query parameters, answers 400). On a stream,
a ticket beside another user's credentials is refused (the ``reused``
column, 401).
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

WARNING = {"type": "warning", "data": {"code": "c", "message": "m"}}

CALLERS = (
    "anonymous", "owner_session", "owner_read", "owner_publish", "other_user", "admin",
    "revoked_token", "disabled_token", "expired_ticket", "other_exec_ticket", "reused_ticket",
)

#: endpoint -> expected status for each caller, in the order of CALLERS.
EXPECTED: dict[str, tuple[int, ...]] = {
    #                  anon sess read publ other admin revok disab expir other reuse
    "create":         (401, 201, 403, 201, 201, 201, 401, 401, 401, 401, 201),
    "get":            (401, 200, 200, 200, 404, 200, 401, 401, 401, 401, 404),
    "list":           (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 400),
    "append":         (401, 201, 403, 201, 404, 201, 401, 401, 401, 401, 404),
    "stream_ticket":  (401, 201, 201, 201, 404, 201, 401, 401, 401, 401, 404),
    # reused: B's token carrying A's ticket is refused (issue 6). Without credentials the server
    # cannot tell who holds a ticket, which is why tickets live 60 s and name one execution.
    "stream":         (401, 200, 200, 200, 404, 200, 401, 401, 401, 401, 401),
    "catalog":        (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 200),
    "tokens_list":    (401, 200, 200, 200, 200, 200, 401, 401, 401, 401, 200),
    "tokens_create":  (401, 201, 403, 403, 403, 403, 401, 401, 401, 401, 403),
    "tokens_delete":  (401, 204, 403, 204, 404, 204, 401, 401, 401, 401, 404),
}
CELLS = [
    pytest.param(endpoint, caller, status, id=f"{endpoint}-{caller}")
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
    exec_id: str
    another_exec_id: str
    session: requests.Session

    def ticket(self, exec_id: str) -> str:
        r = requests.post(
            self.server.api(f"/executions/workflows/{exec_id}/stream-ticket"), headers=self.owner.headers, timeout=10
        )
        assert r.status_code == 201, r.text
        return t.cast(str, r.json()["ticket"])


@pytest.fixture(scope="module")
def world(server, auth, producer, db) -> t.Iterator[World]:
    owner, other, admin, disabled = auth.user(), auth.user(), auth.user(admin=True), auth.user()
    revoked = auth.token(owner, ["read", "publish"])
    with db.transaction() as cur:
        accounts.revoke_token(cur, revoked)
        accounts.disable_user(cur, disabled.email)
    exec_id, another = (producer.create_execution("workflow", "m", owner.user.get_id())["exec_id"] for _ in range(2))
    session = requests.Session()
    r = session.post(server.api("/auth/login"), json={"email": owner.email, "password": owner.password}, timeout=10)
    assert r.status_code == 200
    yield World(server, auth, owner, other, admin, auth.token(owner, ["read"]), revoked, disabled, exec_id, another,
                session)
    session.close()


def _credentials(world: World, caller: str) -> tuple[requests.Session | None, dict[str, str], dict[str, str]]:
    """(session, headers, query parameters) a caller sends."""
    bearer = AuthActions.bearer
    if caller == "anonymous":
        return None, {}, {}
    if caller == "owner_session":
        return world.session, {}, {}
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
    if caller == "expired_ticket":
        # Signed with the server's key two minutes ago: a genuine ticket, expired.
        old = Tickets(SECRET, 60, clock=lambda: time.time() - 120)
        ticket, _ = old.issue("workflow", world.exec_id, world.owner.user.get_id())
        return None, {}, {"ticket": ticket}
    if caller == "other_exec_ticket":
        return None, {}, {"ticket": world.ticket(world.another_exec_id)}
    if caller == "reused_ticket":
        return None, world.other.headers, {"ticket": world.ticket(world.exec_id)}
    raise AssertionError(caller)


def _request(world: World, endpoint: str, caller: str, exec_id: str | None = None) -> requests.Response:
    exec_id = exec_id or world.exec_id
    session, headers, params = _credentials(world, caller)
    execution = f"/executions/workflows/{exec_id}"
    method, path, body = {
        "create": ("POST", "/executions/workflows", {"name": "matrix"}),
        "get": ("GET", execution, None),
        "list": ("GET", "/executions/workflows", None),
        "append": ("POST", f"{execution}/events", {"events": [WARNING]}),
        "stream_ticket": ("POST", f"{execution}/stream-ticket", None),
        "stream": ("GET", f"{execution}/stream", None),
        "catalog": ("GET", "/events/catalog", None),
        "tokens_list": ("GET", "/auth/tokens", None),
        "tokens_create": ("POST", "/auth/tokens", {"scopes": ["read"]}),
        # A fresh token of the owner's for every cell, so each revoke has something to revoke.
        "tokens_delete": ("DELETE", "/auth/tokens/{fresh_prefix}", {}),
    }[endpoint]
    if "{fresh_prefix}" in path:
        path = path.format(fresh_prefix=_fresh_prefix(world))
    send = session.request if session is not None else requests.request
    response = send(method, world.server.api(path), headers=headers, params=params, json=body, timeout=10, stream=True)
    if response.status_code != 200 or endpoint != "stream":
        response.content  # noqa: B018 (a live stream is only opened, never read to its end)
    response.close()
    return response


def _fresh_prefix(world: World) -> str:
    return t.cast(str, accounts.token_prefix(world.auth.token(world.owner, ["read"])))


@pytest.mark.parametrize("endpoint, caller, expected", CELLS)
def test_matrix(world, endpoint, caller, expected):
    response = _request(world, endpoint, caller)
    assert response.status_code == expected, response.text if endpoint != "stream" or expected != 200 else ""
    if expected >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_the_table_covers_every_endpoint_and_caller():
    assert all(len(statuses) == len(CALLERS) for statuses in EXPECTED.values())
    assert len(CELLS) == len(EXPECTED) * len(CALLERS)


# A ticket names its execution, so on any other stream it is refused (401), not 404: no such cell.
@pytest.mark.parametrize(
    "endpoint, caller",
    [(e, "other_user") for e in ("get", "append", "stream_ticket", "stream")]
    + [(e, "reused_ticket") for e in ("get", "append", "stream_ticket")],
)
def test_not_yours_and_does_not_exist_are_byte_identical(world, endpoint, caller):
    theirs = _request(world, endpoint, caller)
    missing = _request(world, endpoint, caller, exec_id="no-such-execution")
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
