"""The Python producer API: own transactions, the caller's transaction, redaction by default."""

from __future__ import annotations

import json

import pytest

from streamapp import Producer
from streamapp import append_events
from streamapp import create_execution
from streamapp.chunks import ChunkPublisher
from streamapp.errors import Conflict
from streamapp.errors import Invalid
from streamapp.errors import NotFound
from streamapp.redact import Redactor

SECRET_CALL = {"tool_call_id": "1", "tool_name": "db", "status": "ok", "input": {"password": "hunter2"}}


def _stored(db, exec_id):
    with db.transaction() as cur:
        cur.execute("SELECT id, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [(i, json.loads(e)) for i, e in cur.fetchall()]


def test_producer_redacts_by_default(db, account):
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "tool_call", "data": SECRET_CALL}])
    ((_, envelope),) = _stored(db, exec_id)
    assert envelope["data"]["input"] == {"password": "[REDACTED]"}
    assert "hunter2" not in json.dumps(envelope)


def test_redaction_can_be_turned_off_explicitly(db, account):
    producer = Producer(db, redact=None)
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "tool_call", "data": SECRET_CALL}])
    assert _stored(db, exec_id)[0][1]["data"]["input"] == {"password": "hunter2"}


def test_appends_commit_with_the_callers_transaction(db, account):
    with db.transaction() as cur:
        exec_id = create_execution(cur, "task", "t", account.user.get_id())["exec_id"]
        result = append_events(cur, exec_id, [{"type": "tool_call", "data": SECRET_CALL}])
        assert (result.first_id, result.last_id) == (1, 1)
    assert _stored(db, exec_id)[0][1]["data"]["input"]["password"] == "[REDACTED]"


def test_a_rolled_back_caller_transaction_stores_nothing(db, account):
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    with pytest.raises(RuntimeError), db.transaction() as cur:
        append_events(cur, exec_id, [{"type": "warning", "data": {"code": "a", "message": "b"}}])
        raise RuntimeError("the host's own work failed")
    assert _stored(db, exec_id) == []
    assert producer.append_events(exec_id, [{"type": "warning", "data": {"code": "a", "message": "b"}}]).first_id == 1


def test_events_after_a_terminal_event_conflict(db, account):
    producer = Producer(db)
    exec_id = producer.create_execution("agent", "a", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])
    with pytest.raises(Conflict):
        producer.append_events(exec_id, [{"type": "warning", "data": {"code": "a", "message": "b"}}])


def test_chunk_publisher_redacts_by_default(db):
    with ChunkPublisher(db, "e-1") as publisher:
        assert publisher.redact("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer [REDACTED]"


SECRET_INPUT = {"query": "q", "api_key": "sk-1", "dsn": "postgres://app:hunter2@db/app", "ssn": "123-45-6789"}


def _stored_input(db, exec_id):
    with db.transaction() as cur:
        cur.execute("SELECT input FROM executions WHERE exec_id = %s", (exec_id,))
        return cur.fetchone()[0]


def test_create_execution_redacts_the_input_by_default(db, account):
    with db.transaction() as cur:
        row = create_execution(cur, "task", "t", account.user.get_id(), input=SECRET_INPUT)
    expected = {"query": "q", "api_key": "[REDACTED]", "dsn": "postgres://app:[REDACTED]@db/app", "ssn": "123-45-6789"}
    assert row["input"] == expected
    assert _stored_input(db, row["exec_id"]) == expected
    assert SECRET_INPUT["api_key"] == "sk-1"  # the caller's object is left as it is


def test_create_execution_redaction_can_be_turned_off(db, account):
    with db.transaction() as cur:
        row = create_execution(cur, "task", "t", account.user.get_id(), input=SECRET_INPUT, redact=None)
    assert _stored_input(db, row["exec_id"]) == SECRET_INPUT


def test_producer_create_execution_uses_the_producers_redactor(db, account):
    configured = Producer(db, redact=Redactor(["ssn"]))
    exec_id = configured.create_execution("agent", "a", account.user.get_id(), input=SECRET_INPUT)["exec_id"]
    assert _stored_input(db, exec_id) == {
        "query": "q",
        "api_key": "[REDACTED]",
        "dsn": "postgres://app:[REDACTED]@db/app",
        "ssn": "[REDACTED]",
    }
    plain = Producer(db, redact=None)
    exec_id = plain.create_execution("agent", "a", account.user.get_id(), input=SECRET_INPUT)["exec_id"]
    assert _stored_input(db, exec_id) == SECRET_INPUT


# -- deeply nested data from Python (SPEC §2 "Robustness", issue 11) ------------------------------


def _deep(depth: int, leaf=1):
    """``depth`` levels of lists, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [65, 5_000, 200_000])
@pytest.mark.parametrize("redact", [Redactor(), None])
def test_deep_event_data_is_invalid_not_a_recursion_error(db, account, depth, redact):
    producer = Producer(db, redact=redact)
    owner = account.user.get_id()
    exec_id = producer.create_execution("agent", "a", owner, output_schema={"type": "object"})["exec_id"]
    for event in (
        {"type": "tool_call", "data": {"tool_call_id": "1", "tool_name": "t", "status": "ok", "input": _deep(depth)}},
        {"type": "complete", "data": {"status": "SUCCESS", "output": {"v": _deep(depth)}}},
        {"type": "custom_thing", "data": {"v": _deep(depth)}},
    ):
        with pytest.raises(Invalid, match="64"):
            producer.append_events(exec_id, [event])
        with pytest.raises(Invalid, match="64"), db.transaction() as cur:
            append_events(cur, exec_id, [event], redact=redact)
    assert _stored(db, exec_id) == []


@pytest.mark.parametrize("field", ["input", "output_schema"])
def test_a_deep_input_or_schema_is_invalid_not_a_recursion_error(db, account, field):
    deep = {"properties": {"a": _deep(200_000)}} if field == "output_schema" else _deep(200_000)
    with pytest.raises(Invalid, match="64"):
        Producer(db).create_execution("task", "t", account.user.get_id(), **{field: deep})
    with pytest.raises(Invalid, match="64"), db.transaction() as cur:
        create_execution(cur, "task", "t", account.user.get_id(), **{field: deep})


def test_data_at_the_depth_limit_is_stored(db, account):
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "w", account.user.get_id(), input=_deep(64))["exec_id"]
    producer.append_events(exec_id, [{"type": "custom_thing", "data": {"v": _deep(63)}}])  # data is a level too
    assert _stored(db, exec_id)[0][1]["data"] == {"v": _deep(63)}


def test_the_producers_depth_limit_is_its_own(db, account):
    producer = Producer(db, max_json_depth=8)
    exec_id = producer.create_execution("workflow", "w", account.user.get_id(), input=_deep(8))["exec_id"]
    with pytest.raises(Invalid, match="8"):
        producer.append_events(exec_id, [{"type": "custom_thing", "data": {"v": _deep(8)}}])
    with pytest.raises(Invalid, match="8"):
        producer.create_execution("workflow", "w", account.user.get_id(), input=_deep(9))


@pytest.mark.parametrize("value", ["nul \x00 here", {"key\x00": 1}, ["lone \ud800 surrogate"]])
def test_input_jsonb_cannot_hold_is_invalid_before_any_statement(db, account, value):
    """Refused here, not by a failing INSERT that would write the input into the server's log (SPEC §2)."""
    with pytest.raises(Invalid, match="input"):
        Producer(db, redact=None).create_execution("task", "t", account.user.get_id(), input=value)


def test_event_data_with_a_lone_surrogate_is_invalid(db, account):
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    with pytest.raises(Invalid, match=r"events\[0\].data"):
        producer.append_events(exec_id, [{"type": "custom_thing", "data": {"v": "lone \udc00"}}])


def test_a_cancel_its_caller_refuses_ends_nothing(producer, workflow):
    with pytest.raises(NotFound), producer.canceling(workflow, reason="stop") as pending:
        assert pending.execution["terminal_event_id"] is None  # the locked row
        raise NotFound()  # what the HTTP layer does for a user who may not write to it
    assert producer.cancel(workflow)["status"] == "CANCELED"
