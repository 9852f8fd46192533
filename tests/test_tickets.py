"""Stream tickets: the signer on a frozen clock, the endpoint, and streams opened with ?ticket= in
process (SPEC §7, issue 6); streams over a live gunicorn are in tests/live/test_tickets.py."""

from __future__ import annotations

import datetime
import re
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from streamapp import accounts
from streamapp.cursor import canonical
from streamapp.cursor import list_digest
from streamapp.tickets import LIST_KIND
from streamapp.tickets import MAX_CLOCK_SKEW_S
from streamapp.tickets import Claims
from streamapp.tickets import TicketExpired
from streamapp.tickets import TicketInvalid
from streamapp.tickets import Tickets
from streamapp.tickets import isoformat
from tests.conftest import SECRET

T0 = 1_795_000_000.0  # 2026-11-18, any fixed moment
WORKFLOWS = "/api/v0/executions/workflows"


class Clock:
    """A frozen clock that tests move by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> Tickets:
    return Tickets(SECRET, 60, clock=clock)


def _tamper(ticket: str, index: int) -> str:
    swapped = "A" if ticket[index] != "A" else "B"
    return ticket[:index] + swapped + ticket[index + 1 :]


# -- the signer, on a frozen clock ----------------------------------------------------------------


def test_issue_returns_a_url_safe_ticket_and_its_expiry(issuer):
    ticket, expires_at = issuer.issue("workflow", "e-1", "7")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", ticket)
    assert expires_at == datetime.datetime.fromtimestamp(T0 + 60, tz=datetime.UTC)


def test_expiry_is_to_the_millisecond(clock, issuer):
    clock.now = T0 + 0.9876
    _, expires_at = issuer.issue("workflow", "e-1", "7")
    assert expires_at == datetime.datetime.fromtimestamp(T0 + 60.987, tz=datetime.UTC)


def test_verify_returns_the_claims(issuer):
    ticket, expires_at = issuer.issue("agent", "e-1", "7", "abcdef012345")
    claims = issuer.verify(ticket, kind="agent", exec_id="e-1")
    issued = datetime.datetime.fromtimestamp(T0, tz=datetime.UTC)
    assert claims == Claims("agent", "e-1", "7", "abcdef012345", issued, expires_at)


def test_reusable_until_just_before_expiry(clock, issuer):
    ticket, _ = issuer.issue("workflow", "e-1", "7")
    for moment in (T0, T0 + 1, T0 + 30, T0 + 59.999):
        clock.now = moment
        assert issuer.verify(ticket, kind="workflow", exec_id="e-1").user_id == "7"


@pytest.mark.parametrize("after", [60, 60.5, 3600 * 24 * 365])
def test_expired_at_expires_at_and_later(clock, issuer, after):
    ticket, _ = issuer.issue("workflow", "e-1", "7")
    clock.now = T0 + after
    with pytest.raises(TicketExpired, match="expired"):
        issuer.verify(ticket, kind="workflow", exec_id="e-1")


def test_ttl_is_the_issuers(clock):
    ticket, expires_at = Tickets(SECRET, 1, clock=clock).issue("workflow", "e-1", "7")
    assert expires_at.timestamp() == T0 + 1
    clock.now = T0 + 1
    with pytest.raises(TicketExpired):
        Tickets(SECRET, 1, clock=clock).verify(ticket, kind="workflow", exec_id="e-1")


@pytest.mark.parametrize(
    "kind, exec_id", [("workflow", "e-2"), ("agent", "e-1"), ("workflow", "e-1x"), ("workflow", "")]
)
def test_another_stream_is_invalid(issuer, kind, exec_id):
    ticket, _ = issuer.issue("workflow", "e-1", "7")
    with pytest.raises(TicketInvalid, match="another execution"):
        issuer.verify(ticket, kind=kind, exec_id=exec_id)


def test_a_list_ticket_and_a_single_ticket_never_pass_for_each_other(issuer):
    digest = list_digest(canonical(["workflows/e-1", "agents/e-2"]))
    listed, _ = issuer.issue(LIST_KIND, digest, "7")
    assert issuer.verify(listed, kind=LIST_KIND, exec_id=digest).user_id == "7"
    single, _ = issuer.issue("workflow", "e-1", "7")
    with pytest.raises(TicketInvalid, match="another list of executions"):
        issuer.verify(single, kind=LIST_KIND, exec_id=digest)
    with pytest.raises(TicketInvalid, match="another execution"):
        issuer.verify(listed, kind="workflow", exec_id="e-1")
    other = list_digest(canonical(["workflows/e-1"]))
    with pytest.raises(TicketInvalid, match="another list of executions"):
        issuer.verify(listed, kind=LIST_KIND, exec_id=other)


def test_tampering_anywhere_is_invalid(issuer):
    ticket, _ = issuer.issue("workflow", "e-1", "7")
    for index in range(len(ticket)):
        if ticket[index] == ".":
            continue
        with pytest.raises(TicketInvalid):
            issuer.verify(_tamper(ticket, index), kind="workflow", exec_id="e-1")


@pytest.mark.parametrize("value", ["", "x", "a.b.c", "..", "é" * 10, "eyJrIjoid29ya2Zsb3cifQ.AaIT1lb-.x" * 3])
def test_garbage_is_invalid(issuer, value):
    with pytest.raises(TicketInvalid, match="not valid"):
        issuer.verify(value, kind="workflow", exec_id="e-1")


def test_another_secret_is_invalid(clock, issuer):
    ticket, _ = Tickets("another-secret-" + "y" * 20, 60, clock=clock).issue("workflow", "e-1", "7")
    with pytest.raises(TicketInvalid):
        issuer.verify(ticket, kind="workflow", exec_id="e-1")


def test_the_same_secret_with_another_salt_is_invalid(issuer):
    # A value signed with the same key for another purpose (a session, say) is no ticket.
    forged = URLSafeTimedSerializer(SECRET).dumps({"k": "workflow", "e": "e-1", "u": "7", "t": None})
    with pytest.raises(TicketInvalid):
        issuer.verify(forged, kind="workflow", exec_id="e-1")


def test_a_ticket_from_the_future_is_accepted_within_the_clock_skew(clock, issuer):
    clock.now = T0 + MAX_CLOCK_SKEW_S
    ticket, _ = issuer.issue("workflow", "e-1", "7")
    clock.now = T0
    assert issuer.verify(ticket, kind="workflow", exec_id="e-1")
    clock.now = T0 - 0.01
    with pytest.raises(TicketInvalid, match="not valid yet"):
        issuer.verify(ticket, kind="workflow", exec_id="e-1")


def test_a_secret_key_is_required():
    with pytest.raises(ValueError):
        Tickets("", 60)


def test_isoformat_is_utc_with_z():
    moment = datetime.datetime(2026, 11, 24, 20, 0, 0, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert isoformat(moment) == "2026-11-24T19:00:00.123Z"


# -- the endpoint ---------------------------------------------------------------------------------


def _ticket_url(exec_id: str, segment: str = "workflows") -> str:
    return f"/api/v0/executions/{segment}/{exec_id}/stream-ticket"


def _login(client, account, **kw):
    r = client.post("/api/v0/auth/login", json={"email": account.email, "password": account.password}, **kw)
    assert r.status_code == 200, r.get_data(as_text=True)


def test_endpoint_answers_201_with_ticket_and_expiry(client, account, workflow):
    before = datetime.datetime.now(datetime.UTC)
    r = client.post(_ticket_url(workflow), headers=account.headers)
    after = datetime.datetime.now(datetime.UTC)
    assert r.status_code == 201
    body = r.get_json()
    assert set(body) == {"ticket", "expires_at"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["expires_at"])
    expires_at = datetime.datetime.fromisoformat(body["expires_at"])
    ttl = datetime.timedelta(seconds=60)
    assert before + ttl - datetime.timedelta(milliseconds=1) <= expires_at <= after + ttl
    assert r.headers["Cache-Control"] == "no-store"


def test_endpoint_ttl_follows_the_setting(make_client, account, workflow):
    r = make_client(ticket_ttl_s=5).post(_ticket_url(workflow), headers=account.headers)
    expires_at = datetime.datetime.fromisoformat(r.get_json()["expires_at"])
    left = expires_at - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(seconds=3) < left <= datetime.timedelta(seconds=5)


def test_endpoint_names_the_execution_and_the_caller(app, client, auth, account, workflow):
    token = auth.token(account, ["read"])
    r = client.post(_ticket_url(workflow), headers=auth.bearer(token))
    assert r.status_code == 201
    claims = app.extensions["streamapp"].tickets.verify(r.get_json()["ticket"], kind="workflow", exec_id=workflow)
    assert (claims.user_id, claims.token_prefix) == (account.user.get_id(), accounts.token_prefix(token))


def test_endpoint_with_a_session_needs_no_body(client, account, workflow):
    _login(client, account)
    r = client.post(_ticket_url(workflow))
    assert r.status_code == 201
    assert r.get_json()["ticket"]


def test_endpoint_with_a_session_from_another_origin_is_403(client, account, workflow):
    _login(client, account)
    r = client.post(_ticket_url(workflow), headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    assert client.post(_ticket_url(workflow), headers={"Origin": "http://localhost"}).status_code == 201


def test_endpoint_for_someone_elses_execution_looks_missing(client, auth, workflow):
    other = auth.user()
    theirs = client.post(_ticket_url(workflow), headers=other.headers)
    missing = client.post(_ticket_url("no-such-execution"), headers=other.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.data == missing.data


def test_endpoint_for_a_wrong_kind_is_404(client, account, workflow):
    assert client.post(_ticket_url(workflow, "agents"), headers=account.headers).status_code == 404
    assert client.post(_ticket_url(workflow, "jobs"), headers=account.headers).status_code == 404


def test_endpoint_needs_a_credential(client, workflow):
    assert client.post(_ticket_url(workflow)).status_code == 401


# -- the stream, in process, on a frozen clock ----------------------------------------------------


def _stream_url(exec_id: str, segment: str = "workflows") -> str:
    return f"/api/v0/executions/{segment}/{exec_id}/stream"


def test_expired_ticket_is_401_on_a_frozen_clock(app, client, account, workflow):
    clock = Clock(time.time())
    app.extensions["streamapp"].tickets = Tickets(SECRET, 60, clock=clock)
    ticket = client.post(_ticket_url(workflow), headers=account.headers).get_json()["ticket"]
    clock.now += 60
    r = client.get(_stream_url(workflow), query_string={"ticket": ticket})
    assert r.status_code == 401
    message = r.get_json()["error"]["message"]
    assert "expired" in message and f"POST /api/v0/executions/workflows/{workflow}/stream-ticket" in message


@pytest.mark.parametrize("param", ["ticket", "token", "access_token", "api_key"])
def test_a_long_lived_token_in_the_url_is_400_saying_how_to_get_a_ticket(client, account, workflow, param):
    r = client.get(_stream_url(workflow), query_string={param: account.token})
    assert r.status_code == 400, r.get_data(as_text=True)
    message = r.get_json()["error"]["message"]
    assert "stream-ticket" in message and "Authorization: Bearer" in message
    assert account.token not in message


# -- extension mode: the host's users -------------------------------------------------------------


class _HostUser:
    is_authenticated = True
    is_anonymous = False

    def __init__(self, user_id: str, active: bool = True) -> None:
        self.id, self.is_active = user_id, active

    def get_id(self) -> str:
        return self.id


@pytest.fixture
def host(settings):
    import flask
    import flask_login

    from streamapp import StreamApp

    app = flask.Flask("host")
    app.secret_key = "host-secret-" + "x" * 20
    manager = flask_login.LoginManager(app)
    inactive: set[str] = set()
    manager.request_loader(lambda req: _HostUser(req.headers["X-User"]) if "X-User" in req.headers else None)
    manager.user_loader(lambda user_id: _HostUser(user_id, user_id not in inactive))
    StreamApp(settings=settings, url_prefix="/progress").init_app(app)
    app.config["inactive"] = inactive
    yield app
    app.extensions["streamapp"].close()


def test_tickets_in_extension_mode_use_the_hosts_user_loader(host):
    client = host.test_client()
    alice = {"X-User": "alice"}
    exec_id = client.post("/progress/executions/workflows", json={"name": "w"}, headers=alice).get_json()["exec_id"]
    events = {"events": [{"type": "complete", "data": {"status": "SUCCESS"}}]}
    appended = client.post(f"/progress/executions/workflows/{exec_id}/events", json=events, headers=alice)
    assert appended.status_code == 201
    assert client.post(f"/progress/executions/workflows/{exec_id}/stream-ticket").status_code == 401
    assert (
        client.post(f"/progress/executions/workflows/{exec_id}/stream-ticket", headers={"X-User": "bob"}).status_code
        == 404
    )
    r = client.post(f"/progress/executions/workflows/{exec_id}/stream-ticket", headers=alice)
    assert r.status_code == 201
    stream = f"/progress/executions/workflows/{exec_id}/stream"
    ticket = r.get_json()["ticket"]
    ok = client.get(stream, query_string={"ticket": ticket})
    assert ok.status_code == 200 and b"event: complete" in ok.get_data()
    host.config["inactive"].add("alice")
    assert client.get(stream, query_string={"ticket": ticket}).status_code == 401
