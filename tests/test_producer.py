"""The Python producer API: own transactions, the caller's transaction, redaction by default."""

from __future__ import annotations

import json

import pytest

from streamapp import Producer
from streamapp import append_events
from streamapp import create_execution
from streamapp.chunks import ChunkPublisher
from streamapp.errors import Conflict
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
    (_, envelope), = _stored(db, exec_id)
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
        "query": "q", "api_key": "[REDACTED]", "dsn": "postgres://app:[REDACTED]@db/app", "ssn": "[REDACTED]"
    }
    plain = Producer(db, redact=None)
    exec_id = plain.create_execution("agent", "a", account.user.get_id(), input=SECRET_INPUT)["exec_id"]
    assert _stored_input(db, exec_id) == SECRET_INPUT
