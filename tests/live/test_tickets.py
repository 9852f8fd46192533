"""Stream tickets on a live gunicorn: streams opened with ?ticket= (SPEC §7, issue 6)."""

from __future__ import annotations

import time

import pytest
import requests

from streamapp import accounts
from tests.conftest import live_server
from tests.sse import Stream
from tests.test_tickets import _tamper

pytestmark = pytest.mark.live


# -- streams over the live server -----------------------------------------------------------------


def _live_ticket(server, account, exec_id: str, headers=None) -> str:
    r = requests.post(
        server.api(f"/executions/workflows/{exec_id}/stream-ticket"), headers=headers or account.headers, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()["ticket"]


def _live_stream(server, exec_id: str, ticket: str, headers=None, **params) -> requests.Response:
    """Open a stream with a ticket; the body is read only for an answer that is not a live stream."""
    r = requests.get(
        server.api(f"/executions/workflows/{exec_id}/stream"),
        params={"ticket": ticket, **params},
        headers=headers or {},
        timeout=10,
        stream=True,
    )
    if r.status_code != 200:
        r.content  # noqa: B018 (read the error body before the connection goes)
    return r


def _append(producer, exec_id, *events):
    producer.append_events(exec_id, [{"type": t, "data": d} for t, d in events])


RUNNING = ("workflow_status", {"status": "RUNNING"})
COMPLETE = ("complete", {"status": "SUCCESS"})


def test_a_ticket_alone_opens_the_stream(server, account, workflow, producer):
    ticket = _live_ticket(server, account, workflow)
    _append(producer, workflow, RUNNING)
    with Stream(server.api(f"/executions/workflows/{workflow}/stream"), params={"ticket": ticket}) as s:
        assert s.response.status_code == 200
        assert s.next_frame().json["data"] == {"status": "RUNNING"}
        _append(producer, workflow, COMPLETE)
        assert [f.event for f in s.rest()] == ["complete"]


def test_a_ticket_is_reusable_within_its_ttl(server, account, workflow, producer):
    ticket = _live_ticket(server, account, workflow)
    _append(producer, workflow, RUNNING, COMPLETE)
    first = _live_stream(server, workflow, ticket)
    again = _live_stream(server, workflow, ticket, last_event_id="1")
    assert (first.status_code, again.status_code) == (200, 200)
    assert b"event: complete" in first.content and b"event: complete" in again.content
    # And once the terminal event is behind the cursor, the usual 204.
    assert _live_stream(server, workflow, ticket, last_event_id="2").status_code == 204


def test_a_session_ticket_works(server, account, workflow, producer):
    session = requests.Session()
    r = session.post(server.api("/auth/login"), json={"email": account.email, "password": account.password}, timeout=10)
    assert r.status_code == 200
    ticket = session.post(server.api(f"/executions/workflows/{workflow}/stream-ticket"), timeout=10).json()["ticket"]
    _append(producer, workflow, COMPLETE)
    assert _live_stream(server, workflow, ticket).status_code == 200


def _refused(response, *words: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"]["code"] == "not_authenticated"
    for word in words:
        assert word in body["error"]["message"]


def test_a_ticket_for_another_execution_is_401(server, account, producer):
    mine = [producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"] for _ in range(2)]
    ticket = _live_ticket(server, account, mine[0])
    _refused(_live_stream(server, mine[1], ticket), "another execution")


def test_a_tampered_ticket_is_401(server, account, workflow):
    ticket = _live_ticket(server, account, workflow)
    _refused(_live_stream(server, workflow, _tamper(ticket, len(ticket) - 3)), "not valid")
    _refused(_live_stream(server, workflow, "nonsense"), "not valid")


def test_a_disabled_users_ticket_is_401(server, account, workflow, db):
    ticket = _live_ticket(server, account, workflow)
    with db.transaction() as cur:
        accounts.disable_user(cur, account.email)
    _refused(_live_stream(server, workflow, ticket), "disabled")


def test_a_ticket_from_a_revoked_token_is_401(server, auth, account, workflow, db):
    token = auth.token(account, ["read"])
    ticket = _live_ticket(server, account, workflow, auth.bearer(token))
    with db.transaction() as cur:
        accounts.revoke_token(cur, token)
    _refused(_live_stream(server, workflow, ticket), "revoked")


def test_a_ticket_beside_another_users_credentials_is_401(server, auth, account, workflow, producer):
    """Issue 6: a request signed in as B cannot stream with A's ticket."""
    other = auth.user()
    _append(producer, workflow, COMPLETE)
    ticket = _live_ticket(server, account, workflow)
    # The other user alone cannot see the execution, and A's ticket does not change that.
    alone = requests.get(server.api(f"/executions/workflows/{workflow}/stream"), headers=other.headers, timeout=10)
    assert alone.status_code == 404
    _refused(_live_stream(server, workflow, ticket, headers=other.headers), "another user")
    session = requests.Session()
    login = session.post(server.api("/auth/login"), json={"email": other.email, "password": other.password}, timeout=10)
    assert login.status_code == 200
    stream_url = server.api(f"/executions/workflows/{workflow}/stream")
    _refused(session.get(stream_url, params={"ticket": ticket}, timeout=10), "another user")
    # Their own execution is no more theirs to open with A's ticket.
    theirs = producer.create_execution("workflow", "wf", other.user.get_id())["exec_id"]
    _refused(_live_stream(server, theirs, ticket, headers=other.headers), "another execution")


def test_a_ticket_beside_its_own_users_credentials_opens_the_stream(server, auth, account, workflow, producer):
    _append(producer, workflow, COMPLETE)
    ticket = _live_ticket(server, account, workflow)
    read_only = auth.bearer(auth.token(account, ["read"]))
    for headers in (account.headers, read_only):
        r = _live_stream(server, workflow, ticket, headers=headers)
        assert r.status_code == 200 and b"event: complete" in r.content


def test_a_token_in_the_url_is_still_refused(server, account, workflow):
    r = requests.get(
        server.api(f"/executions/workflows/{workflow}/stream"), params={"access_token": account.token}, timeout=10
    )
    assert r.status_code == 400 and "stream-ticket" in r.json()["error"]["message"]


def test_the_access_log_has_the_path_but_never_the_ticket(server, account, workflow, producer):
    ticket = _live_ticket(server, account, workflow)
    _append(producer, workflow, COMPLETE)
    r = _live_stream(server, workflow, ticket)
    assert r.status_code == 200 and b"event: complete" in r.content
    line = f'"GET /api/v0/executions/workflows/{workflow}/stream HTTP/1.1" 200'
    end = time.monotonic() + 10
    while line not in server.log_text() and time.monotonic() < end:
        time.sleep(0.05)  # gunicorn writes the access line once the response is done
    log = server.log_text()
    assert line in log
    assert ticket not in log and ticket[:20] not in log


def test_an_expired_ticket_is_401_on_a_live_server(database, tmp_path, account, workflow):
    with live_server(database, tmp_path, {"STREAMAPP_TICKET_TTL_S": "1"}) as server:
        ticket = _live_ticket(server, account, workflow)
        end = time.monotonic() + 10
        while True:
            r = _live_stream(server, workflow, ticket)
            r.close()
            if r.status_code == 401 or time.monotonic() > end:
                break
            time.sleep(0.1)  # the ticket lives one second: poll until it is refused, with a deadline
        _refused(r, "expired")


@pytest.mark.parametrize("how", ["revoke the token", "disable the user"])
def test_a_ticket_stream_ends_when_its_credential_goes(server, auth, account, workflow, db, how):
    token = auth.token(account, ["read"])
    ticket = _live_ticket(server, account, workflow, auth.bearer(token))
    with Stream(server.api(f"/executions/workflows/{workflow}/stream"), params={"ticket": ticket}) as s:
        assert s.response.status_code == 200
        assert s.next_item().retry is not None and s.next_item() == "connected"
        with db.transaction() as cur:
            if how == "revoke the token":
                accounts.revoke_token(cur, token)
            else:
                accounts.disable_user(cur, account.email)
        s.ends_within(5)  # the server's heartbeat is 1 s
