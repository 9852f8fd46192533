"""Appending events over HTTP (SPEC §2, §3, §4): ids, status, all-or-nothing batches, validation and
size limits, through the Flask test client and a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from streamapp import create_app
from tests.test_api import COMPLETE
from tests.test_api import RUNNING
from tests.test_api import WARNING
from tests.test_api import _append
from tests.test_api import _create
from tests.test_api import _error
from tests.test_api import _login
from tests.test_api import _url


def _delta(sequence: int) -> dict:
    return {"type": "structured_delta", "data": {"content": {"n": sequence}, "sequence": sequence}}


def _stored(db, exec_id: str) -> list[tuple[int, str]]:
    with db.transaction() as cur:
        cur.execute("SELECT id, type FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return cur.fetchall()


@pytest.fixture
def small_client(settings):
    """A client of an app with small body and event limits."""
    app = create_app(settings.replace(max_body_bytes=1024, max_event_bytes=256))
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["streamapp"].close()


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
