"""Executions and events over HTTP (SPEC §2), through the Flask test client and a real PostgreSQL."""

from __future__ import annotations

import base64
import datetime
import json
import re

import pytest

from streamapp import catalog
from streamapp import create_app

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


def _delta(sequence: int) -> dict:
    return {"type": "structured_delta", "data": {"content": {"n": sequence}, "sequence": sequence}}


def _stored(db, exec_id: str) -> list[tuple[int, str]]:
    with db.transaction() as cur:
        cur.execute("SELECT id, type FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return cur.fetchall()


def _login(client, account) -> None:
    r = client.post("/api/v0/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 200


@pytest.fixture
def small_client(settings):
    """A client of an app with small body and event limits."""
    app = create_app(settings.replace(max_body_bytes=1024, max_event_bytes=256))
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["streamapp"].db.close()


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


# -- list -----------------------------------------------------------------------------------------


def _list(client, account, segment: str = "workflows", **params):
    return client.get(_url(segment), query_string=params, headers=account.headers)


def test_list_is_newest_first(client, auth):
    owner = auth.user()
    ids = [_create(client, owner)["exec_id"] for _ in range(3)]
    r = _list(client, owner)
    assert r.status_code == 200
    body = r.get_json()
    assert [d["exec_id"] for d in body["items"]] == ids[::-1]
    assert body["next_cursor"] is None
    assert all(set(d) == DOCUMENT_FIELDS for d in body["items"])


def test_list_shows_only_that_kind(client, auth):
    owner = auth.user()
    agent = _create(client, owner, "agents")["exec_id"]
    _create(client, owner, "tasks")
    assert [d["exec_id"] for d in _list(client, owner, "agents").get_json()["items"]] == [agent]


def test_user_lists_only_their_own(client, auth):
    mine, theirs = auth.user(), auth.user()
    _create(client, theirs)
    own = _create(client, mine)["exec_id"]
    assert [d["exec_id"] for d in _list(client, mine).get_json()["items"]] == [own]


def test_admin_lists_everyones(client, auth):
    first, second, admin = auth.user(), auth.user(), auth.user(admin=True)
    a = _create(client, first)["exec_id"]
    b = _create(client, second)["exec_id"]
    items = _list(client, admin, limit=2).get_json()["items"]
    assert [d["exec_id"] for d in items] == [b, a]


def test_list_pages_until_next_cursor_is_null(client, auth):
    owner = auth.user()
    ids = [_create(client, owner)["exec_id"] for _ in range(5)][::-1]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = _list(client, owner, **params).get_json()
        seen += [d["exec_id"] for d in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (ids, 3)


def test_full_last_page_has_null_cursor(client, auth):
    owner = auth.user()
    for _ in range(2):
        _create(client, owner)
    body = _list(client, owner, limit=2).get_json()
    assert len(body["items"]) == 2 and body["next_cursor"] is None


def test_list_default_limit_is_20(client, auth):
    owner = auth.user()
    for _ in range(21):
        _create(client, owner, "tasks")
    body = _list(client, owner, "tasks").get_json()
    assert len(body["items"]) == 20 and body["next_cursor"] is not None


@pytest.mark.parametrize("limit", [1, 100])
def test_list_limit_bounds_are_accepted(client, account, limit):
    assert _list(client, account, limit=limit).status_code == 200


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "x" * 201}, "cursor"),
        ({"cursor": _cursor("yesterday|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00")}, "cursor"),
        ({"cursor": _cursor("2026-W01-1|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00|abc")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00|a\u0000b")}, "cursor"),
        ({"cursor": _cursor("2026-01-01T00:00:00+00:00|a b")}, "cursor"),
        ({"page": "2"}, "page"),
    ],
)
def test_bad_list_parameters_are_400(client, account, params, fragment):
    assert fragment in _error(_list(client, account, **params), 400, "bad_request")


def test_anonymous_cannot_list(client):
    _error(client.get(_url("workflows")), 401, "not_authenticated")


# -- events ---------------------------------------------------------------------------------------


def test_append_returns_ids_and_status(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    r = _append(client, account, exec_id, {"type": "workflow_start", "data": {"workflow_id": "w"}}, RUNNING)
    assert (r.status_code, r.get_json()) == (201, {"first_id": 1, "last_id": 2, "status": "RUNNING"})
    r = _append(client, account, exec_id, WARNING)
    assert r.get_json() == {"first_id": 3, "last_id": 3, "status": "RUNNING"}
    assert _stored(db, exec_id) == [(1, "workflow_start"), (2, "workflow_status"), (3, "warning")]


def test_stored_envelope(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    _append(client, account, exec_id, {"type": "deploy_step", "data": {"anything": [1, "\u00e9"]}})
    with db.transaction() as cur:
        cur.execute("SELECT envelope FROM events WHERE exec_id = %s", (exec_id,))
        envelope = json.loads(cur.fetchone()[0])
    assert {k: envelope[k] for k in ("id", "type", "exec_id", "kind", "data")} == {
        "id": 1,
        "type": "deploy_step",
        "exec_id": exec_id,
        "kind": "workflow",
        "data": {"anything": [1, "\u00e9"]},
    }


@pytest.mark.parametrize(
    "segment, events, status",
    [
        ("workflows", [RUNNING], "RUNNING"),
        ("workflows", [RUNNING, {"type": "workflow_status", "data": {"status": "PAUSED"}}], "PAUSED"),
        ("workflows", [RUNNING, COMPLETE], "SUCCESS"),
        ("workflows", [{"type": "error", "data": {"status": "FAILED", "error": {"message": "m"}}}], "FAILED"),
        ("agents", [{"type": "error", "data": {"status": "CANCELED", "error": {"message": "m"}}}], "CANCELED"),
        ("tasks", [{"type": "error", "data": {"status": "TIMED_OUT", "error": {"message": "m"}}}], "TIMED_OUT"),
        ("agents", [{"type": "agent_status", "data": {"status": "RUNNING"}}], "RUNNING"),
        ("tasks", [{"type": "task_status", "data": {"status": "PAUSED"}}], "PAUSED"),
        ("workflows", [{"type": "task_status", "data": {"status": "FAILED", "task_id": "t"}}], "PENDING"),
        ("workflows", [RUNNING, WARNING], "RUNNING"),
        ("tasks", [{"type": "custom", "data": {"status": "SUCCESS"}}], "PENDING"),
    ],
)
def test_events_update_the_execution_status(client, account, segment, events, status):
    exec_id = _create(client, account, segment)["exec_id"]
    r = _append(client, account, exec_id, *events, segment=segment)
    assert (r.status_code, r.get_json()["status"]) == (201, status)
    doc = client.get(_url(segment, exec_id), headers=account.headers).get_json()
    assert (doc["status"], doc["last_event_id"]) == (status, len(events))


def test_batch_is_all_or_nothing(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    r = _append(client, account, exec_id, RUNNING, WARNING, {"type": "warning", "data": {"code": "c"}})
    assert "events[2]" in _error(r, 422, "invalid")
    assert _stored(db, exec_id) == []
    doc = client.get(_url("workflows", exec_id), headers=account.headers).get_json()
    assert (doc["status"], doc["last_event_id"]) == ("PENDING", 0)


FAILED = {"type": "error", "data": {"status": "FAILED", "error": {"message": "x"}}}


@pytest.mark.parametrize("terminal", [COMPLETE, FAILED])
def test_append_after_terminal_is_409(client, account, db, terminal):
    exec_id = _create(client, account)["exec_id"]
    assert _append(client, account, exec_id, terminal).status_code == 201
    _error(_append(client, account, exec_id, WARNING), 409, "conflict")
    _error(_append(client, account, exec_id, COMPLETE), 409, "conflict")
    assert _stored(db, exec_id) == [(1, terminal["type"])]


def test_event_after_terminal_in_same_batch_is_409(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    _error(_append(client, account, exec_id, RUNNING, COMPLETE, WARNING), 409, "conflict")
    assert _stored(db, exec_id) == []


@pytest.mark.parametrize(
    "events, fragment",
    [
        ([{"type": "Bad", "data": {}}], "must match ^[a-z][a-z0-9_]{0,63}$"),
        ([{"type": "a-b", "data": {}}], "must match"),
        ([{"type": "x" * 65, "data": {}}], "must match"),
        ([{"type": 5, "data": {}}], "must match"),
        ([{"type": "llm_chunk", "data": {"content": "hi"}}], "never durable"),
        ([{"type": "custom", "data": []}], "custom.data must be a JSON object"),
        ([{"type": "warning", "data": "text"}], "warning.data must be a JSON object"),
        ([{"type": "warning", "data": None}], "warning.data must be a JSON object"),
        ([{"type": "workflow_status", "data": {}}], "workflow_status.data.status is required"),
        ([{"type": "workflow_status", "data": {"status": "SUCCESS"}}], "workflow_status.data.status must be one of"),
        ([{"type": "task_status", "data": {"status": "RUNNING"}}], "task_id is required inside a workflow"),
        (
            [
                {
                    "type": "tool_call",
                    "data": {"tool_call_id": "1", "tool_name": "t", "status": "s", "duration_ms": True},
                }
            ],
            "duration_ms must be a JSON number",
        ),
        ([{"type": "structured_delta", "data": {"content": 1, "sequence": 1}}], "not an event of workflow executions"),
        ([{"type": "complete", "data": {"status": "FAILED"}}], "complete.data.status must be one of SUCCESS"),
        ([{"type": "error", "data": {"status": "FAILED", "error": {}}}], "error.data.error.message"),
        ([{"data": {}}], "events[0]"),
        (["warning"], "events[0]"),
        ([{"type": "warning", "data": {"code": "c", "message": "m"}, "id": 3}], "events[0]"),
        ([], "events"),
        ([WARNING] * 1001, "events"),
    ],
)
def test_bad_events_are_422(client, account, db, events, fragment):
    exec_id = _create(client, account)["exec_id"]
    assert fragment in _error(_append(client, account, exec_id, *events), 422, "invalid")
    assert _stored(db, exec_id) == []


@pytest.mark.parametrize("body", [{}, {"events": "warning"}, {"events": {"type": "warning"}}, {"events": [], "x": 1}])
def test_bad_events_body_is_422(client, account, body):
    exec_id = _create(client, account)["exec_id"]
    r = client.post(_url("workflows", exec_id, "events"), json=body, headers=account.headers)
    _error(r, 422, "invalid")


def test_custom_type_is_stored(client, account, db):
    exec_id = _create(client, account, "tasks")["exec_id"]
    r = _append(client, account, exec_id, {"type": "deploy_step", "data": {"anything": [1, 2]}}, segment="tasks")
    assert r.status_code == 201
    assert _stored(db, exec_id) == [(1, "deploy_step")]


def test_data_defaults_to_an_empty_object(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    assert _append(client, account, exec_id, {"type": "checkpoint"}).status_code == 201
    assert _stored(db, exec_id) == [(1, "checkpoint")]


SCHEMA = {"type": "object"}


def test_structured_delta_needs_an_output_schema(client, account, db):
    exec_id = _create(client, account, "agents")["exec_id"]
    message = _error(_append(client, account, exec_id, _delta(1), segment="agents"), 422, "invalid")
    assert "output_schema" in message and _stored(db, exec_id) == []


def test_structured_delta_sequence_grows_by_one(client, account, db):
    exec_id = _create(client, account, "agents", output_schema=SCHEMA)["exec_id"]
    assert _append(client, account, exec_id, _delta(1), _delta(2), segment="agents").status_code == 201
    assert _append(client, account, exec_id, _delta(3), segment="agents").status_code == 201
    assert [i for i, _ in _stored(db, exec_id)] == [1, 2, 3]


@pytest.mark.parametrize(
    "batches, expected",
    [
        ([[2]], "sequence must be 1, got 2"),
        ([[1, 3]], "sequence must be 2, got 3"),
        ([[1, 1]], "sequence must be 2, got 1"),
        ([[1, 2], [2]], "sequence must be 3, got 2"),
        ([[1], [3]], "sequence must be 2, got 3"),
    ],
)
def test_structured_delta_gap_or_repeat_is_422(client, account, db, batches, expected):
    exec_id = _create(client, account, "agents", output_schema=SCHEMA)["exec_id"]
    *good, bad = batches
    for batch in good:
        assert _append(client, account, exec_id, *map(_delta, batch), segment="agents").status_code == 201
    before = _stored(db, exec_id)
    r = _append(client, account, exec_id, *map(_delta, bad), segment="agents")
    assert expected in _error(r, 422, "invalid")
    assert _stored(db, exec_id) == before


def test_complete_output_must_match_output_schema(client, account, db):
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
    exec_id = _create(client, account, "agents", output_schema=schema)["exec_id"]
    bad = {"type": "complete", "data": {"status": "SUCCESS", "output": {"answer": 42}}}
    assert "output_schema" in _error(_append(client, account, exec_id, bad, segment="agents"), 422, "invalid")
    good = {"type": "complete", "data": {"status": "SUCCESS", "output": {"answer": "42"}}}
    assert _append(client, account, exec_id, good, segment="agents").status_code == 201
    assert _stored(db, exec_id) == [(1, "complete")]


@pytest.mark.parametrize(
    "raw",
    [
        '{"events": [{"type": "x", "data": {"n": NaN}}]}',
        '{"events": [{"type": "x", "data": {"n": Infinity}}]}',
        '{"events": [{"type": "x", "data": {"n": 1e400}}]}',
        '{"events": [{"type": "x", "data": {"s": "\\udfff"}}]}',
    ],
)
def test_event_data_that_is_not_json_is_400(client, account, db, raw):
    exec_id = _create(client, account)["exec_id"]
    r = client.post(
        _url("workflows", exec_id, "events"), data=raw, content_type="application/json", headers=account.headers
    )
    _error(r, 400, "bad_request")
    assert _stored(db, exec_id) == []


def test_event_data_may_hold_nul(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    r = _append(client, account, exec_id, {"type": "x", "data": {"s": "a\u0000b"}})
    assert r.status_code == 201 and _stored(db, exec_id) == [(1, "x")]


def test_events_body_not_json_is_400(client, account):
    exec_id = _create(client, account)["exec_id"]
    r = client.post(_url("workflows", exec_id, "events"), data="events=x", headers=account.headers)
    _error(r, 400, "bad_request")


def test_events_cookie_request_not_json_is_403(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    _login(client, account)
    r = client.post(_url("workflows", exec_id, "events"), data={"events": "x"})
    _error(r, 403, "forbidden")
    assert _stored(db, exec_id) == []


def test_events_by_session_are_stored(client, account, db):
    exec_id = _create(client, account)["exec_id"]
    _login(client, account)
    assert client.post(_url("workflows", exec_id, "events"), json={"events": [WARNING]}).status_code == 201
    assert _stored(db, exec_id) == [(1, "warning")]


def test_read_token_appending_is_403_before_the_content_is_read(client, auth, account, db):
    exec_id = _create(client, account)["exec_id"]
    read = auth.bearer(auth.token(account, ["read"]))
    for body in ({"events": [WARNING]}, {"events": "not a list"}):
        r = client.post(_url("workflows", exec_id, "events"), json=body, headers=read)
        assert "publish" in _error(r, 403, "forbidden")
    assert _stored(db, exec_id) == []


@pytest.mark.parametrize("segment", ["workflows", "agents"])
def test_events_for_unknown_execution_is_404(client, account, segment):
    exec_id = _create(client, account, "tasks")["exec_id"]
    _error(_append(client, account, exec_id, WARNING, segment=segment), 404, "not_found")
    _error(_append(client, account, "missing", WARNING, segment=segment), 404, "not_found")


# -- size limits ----------------------------------------------------------------------------------


def _body_of(size: int) -> bytes:
    """A valid append body of exactly ``size`` bytes, each event's data under 256 bytes."""
    events = [{"type": "x", "data": {"s": ""}} for _ in range(5)]
    empty = len(json.dumps({"events": events}, separators=(",", ":")))
    spare = size - empty
    for event in events:
        event["data"]["s"], spare = "a" * min(spare, 240), spare - min(spare, 240)
    assert spare == 0
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def test_body_at_the_limit_is_accepted(small_client, account, db):
    exec_id = _create(small_client, account)["exec_id"]
    body = _body_of(1024)
    r = small_client.post(
        _url("workflows", exec_id, "events"), data=body, content_type="application/json", headers=account.headers
    )
    assert (len(body), r.status_code) == (1024, 201)


def test_body_over_the_limit_is_413(small_client, account, db):
    exec_id = _create(small_client, account)["exec_id"]
    r = small_client.post(
        _url("workflows", exec_id, "events"),
        data=_body_of(1025),
        content_type="application/json",
        headers=account.headers,
    )
    _error(r, 413)
    assert _stored(db, exec_id) == []


def test_create_body_over_the_limit_is_413(small_client, account):
    r = small_client.post(_url("workflows"), json={"name": "x", "input": "y" * 2000}, headers=account.headers)
    _error(r, 413)


@pytest.mark.parametrize(
    "text, status",
    [
        ("a" * 248, 201),  # {"s":"…"} is 8 bytes + 248 = 256
        ("a" * 249, 413),
        ("\u00e9" * 124, 201),  # two UTF-8 bytes each
        ("\u00e9" * 125, 413),
    ],
)
def test_event_data_limit_counts_utf8_bytes(small_client, account, db, text, status):
    exec_id = _create(small_client, account)["exec_id"]
    r = small_client.post(
        _url("workflows", exec_id, "events"),
        json={"events": [WARNING, {"type": "x", "data": {"s": text}}]},
        headers=account.headers,
    )
    if status == 413:
        assert "events[1]" in _error(r, 413, "too_large")
        assert _stored(db, exec_id) == []
    else:
        assert r.status_code == 201 and _stored(db, exec_id) == [(1, "warning"), (2, "x")]


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
