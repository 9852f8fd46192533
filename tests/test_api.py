"""Executions over HTTP (SPEC §2): create, owner, read, the catalog and error answers, through the
Flask test client and a real PostgreSQL. Their events: tests/test_api_events.py; the list:
tests/test_api_listing.py."""

from __future__ import annotations

import datetime
import re

import pytest

from streamapp import catalog

SEGMENTS = ("workflows", "agents", "tasks")
DOCUMENT_FIELDS = {
    "exec_id",
    "kind",
    "name",
    "status",
    "output_schema",
    "owner",
    "last_event_id",
    "created_at",
    "stream_url",
    "input",
}
RUNNING = {"type": "workflow_status", "data": {"status": "RUNNING"}}
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}
WARNING = {"type": "warning", "data": {"code": "slow", "message": "taking long"}}


def _url(segment: str, *parts: str) -> str:
    return "/".join(["/api/v0/executions", segment, *parts])


def _error(response, status: int, code: str | None = None) -> str:
    """Assert an error answer of exactly ``{"error": {"code", "message"}}``; return the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]["message"]


def _create(client, account, segment: str = "workflows", **body) -> dict:
    r = client.post(_url(segment), json={"name": "job", **body}, headers=account.headers)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def _append(client, account, exec_id: str, *events, segment: str = "workflows"):
    return client.post(_url(segment, exec_id, "events"), json={"events": list(events)}, headers=account.headers)


def _login(client, account) -> None:
    r = client.post("/api/v0/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 200


# -- create ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", SEGMENTS)
def test_create_returns_the_document(client, account, segment):
    r = client.post(_url(segment), json={"name": "build", "input": {"n": 1}}, headers=account.headers)
    assert r.status_code == 201
    doc = r.get_json()
    assert set(doc) == DOCUMENT_FIELDS
    assert (doc["kind"], doc["name"], doc["status"], doc["input"]) == (segment[:-1], "build", "PENDING", {"n": 1})
    assert (doc["output_schema"], doc["owner"], doc["last_event_id"]) == (None, account.user.get_id(), 0)
    assert doc["stream_url"] == f"/api/v0/executions/{segment}/{doc['exec_id']}/stream"
    assert datetime.datetime.fromisoformat(doc["created_at"]).tzinfo is not None


def test_create_keeps_output_schema(client, account):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    assert _create(client, account, "agents", output_schema=schema)["output_schema"] == schema


def test_generated_exec_id_is_url_safe_and_unguessable(client, account):
    ids = {_create(client, account)["exec_id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22,64}", i) for i in ids)


def test_producer_may_choose_the_exec_id(client, account):
    exec_id = "job-" + "x" * 60
    assert _create(client, account, exec_id=exec_id)["exec_id"] == exec_id


@pytest.mark.parametrize("second", ["workflows", "agents"])
def test_exec_id_in_use_is_409(client, account, second):
    exec_id = _create(client, account)["exec_id"]
    r = client.post(_url(second), json={"name": "again", "exec_id": exec_id}, headers=account.headers)
    assert exec_id in _error(r, 409, "conflict")


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": None}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "x", "exec_id": ""}, "exec_id"),
        ({"name": "x", "exec_id": "a b"}, "exec_id"),
        ({"name": "x", "exec_id": "a/b"}, "exec_id"),
        ({"name": "x", "exec_id": "a\u0000"}, "exec_id"),
        ({"name": "x", "exec_id": "x" * 65}, "exec_id"),
        ({"name": "x", "exec_id": 7}, "exec_id"),
        ({"name": "x", "color": "red"}, "color"),
        ({"name": "x", "output_schema": "string"}, "output_schema"),
        ({"name": "x", "output_schema": {"type": 5}}, "output_schema"),
        ({"name": "x", "input": {"text": "nul \u0000 here"}}, "input"),
        ({"name": "x", "input": [{"\u0000": 1}]}, "input"),
        ({"name": "x", "owner": ""}, "owner"),
        ({"name": "x", "owner": "a\u0000@example.com"}, "owner"),
    ],
)
def test_bad_create_body_is_422_naming_the_field(client, account, body, field):
    r = client.post(_url("workflows"), json=body, headers=account.headers)
    assert field in _error(r, 422, "invalid")


def test_create_body_must_be_an_object(client, account):
    _error(client.post(_url("workflows"), json=["name"], headers=account.headers), 422, "invalid")


@pytest.mark.parametrize(
    "data, content_type",
    [
        ("name=x", "application/x-www-form-urlencoded"),
        ('{"name": "x"}', "text/plain"),
        ('{"name": ', "application/json"),
        ("null", "application/json"),
        ('{"name": "x", "input": NaN}', "application/json"),
        ('{"name": "x", "input": -Infinity}', "application/json"),
        ('{"name": "x", "input": 1e999}', "application/json"),
        ('{"name": "x", "input": "\\ud800"}', "application/json"),
        ('{"name": "\\udc00x"}', "application/json"),
        (b'{"name": "\xff"}', "application/json"),
    ],
)
def test_body_that_is_not_json_is_400(client, account, data, content_type):
    r = client.post(_url("workflows"), data=data, content_type=content_type, headers=account.headers)
    _error(r, 400, "bad_request")


def test_escaped_surrogate_pair_is_fine(client, account):
    r = client.post(
        _url("workflows"),
        data='{"name": "x", "input": "\\ud83d\\ude00"}',
        content_type="application/json",
        headers=account.headers,
    )
    assert r.status_code == 201 and r.get_json()["input"] == "\U0001f600"


def test_cookie_request_that_is_not_json_is_403(client, account):
    _login(client, account)
    r = client.post(_url("workflows"), data={"name": "x"})
    assert "application/json" in _error(r, 403, "forbidden")


def test_read_token_cannot_create(client, auth, account):
    r = client.post(_url("workflows"), json={"name": "x"}, headers=auth.bearer(auth.token(account, ["read"])))
    assert "publish" in _error(r, 403, "forbidden")


def test_anonymous_cannot_create(client):
    _error(client.post(_url("workflows"), json={"name": "x"}), 401, "not_authenticated")


# -- owner ----------------------------------------------------------------------------------------


def test_user_cannot_set_owner(client, auth, account):
    other = auth.user()
    r = client.post(_url("workflows"), json={"name": "x", "owner": other.email}, headers=account.headers)
    assert "owner" in _error(r, 403, "forbidden")


def test_admin_session_cannot_set_owner(client, auth, account):
    admin = auth.user(admin=True)
    _login(client, admin)
    r = client.post(_url("workflows"), json={"name": "x", "owner": account.email})
    _error(r, 403, "forbidden")


@pytest.mark.parametrize("by", ["email", "id"])
def test_admin_publish_token_sets_owner(client, auth, account, by):
    admin = auth.user(admin=True)
    owner = account.email if by == "email" else account.user.get_id()
    doc = _create(client, admin, owner=owner)
    assert doc["owner"] == account.user.get_id()
    mine = client.get(_url("workflows", doc["exec_id"]), headers=account.headers)
    assert mine.status_code == 200


def test_admin_read_token_cannot_set_owner(client, auth, account):
    admin = auth.user(admin=True)
    r = client.post(
        _url("workflows"), json={"name": "x", "owner": account.email}, headers=auth.bearer(auth.token(admin, ["read"]))
    )
    _error(r, 403, "forbidden")


@pytest.mark.parametrize("owner", ["nobody@example.com", "999999999", "not-an-email"])
def test_unknown_owner_is_422(client, auth, owner):
    admin = auth.user(admin=True)
    r = client.post(_url("workflows"), json={"name": "x", "owner": owner}, headers=admin.headers)
    assert "owner" in _error(r, 422, "invalid")


# -- read -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", SEGMENTS)
def test_get_returns_the_document(client, account, segment):
    created = _create(client, account, segment, input=[1, 2])
    r = client.get(_url(segment, created["exec_id"]), headers=account.headers)
    assert r.status_code == 200 and r.get_json() == created


def test_get_shows_events_and_status(client, account):
    exec_id = _create(client, account)["exec_id"]
    _append(client, account, exec_id, RUNNING, WARNING)
    doc = client.get(_url("workflows", exec_id), headers=account.headers).get_json()
    assert (doc["status"], doc["last_event_id"]) == ("RUNNING", 2)


@pytest.mark.parametrize("exec_id", ["missing-id", "a%00b", "x" * 65, "a.b", "%C3%A9"])
def test_get_unknown_is_404(client, account, exec_id):
    _error(client.get(_url("workflows", exec_id), headers=account.headers), 404, "not_found")


@pytest.mark.parametrize("segment", ["agents", "tasks"])
def test_get_under_another_kind_is_404(client, account, segment):
    exec_id = _create(client, account)["exec_id"]
    _error(client.get(_url(segment, exec_id), headers=account.headers), 404, "not_found")


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/api/v0/executions/things"),
        ("get", "/api/v0/executions/things"),
        ("get", "/api/v0/executions/things/x"),
        ("post", "/api/v0/executions/things/x/events"),
        ("post", "/api/v0/executions/workflow"),
        ("get", "/api/v0/executions/Workflows"),
    ],
)
def test_unknown_kind_segment_is_404(client, account, method, path):
    r = getattr(client, method)(path, json={"name": "x", "events": [WARNING]}, headers=account.headers)
    _error(r, 404, "not_found")


# -- catalog and errors ---------------------------------------------------------------------------


def test_event_catalog(client, account):
    r = client.get("/api/v0/events/catalog", headers=account.headers)
    assert r.status_code == 200 and r.get_json() == catalog.describe()


def test_event_catalog_needs_authentication(client):
    _error(client.get("/api/v0/events/catalog"), 401, "not_authenticated")


def test_unknown_path_is_json_404(client, account):
    _error(client.get("/api/v0/nothing-here", headers=account.headers), 404)


def test_wrong_method_is_json_405(client, account):
    r = client.delete(_url("workflows"), headers=account.headers)
    _error(r, 405)
    assert "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]
