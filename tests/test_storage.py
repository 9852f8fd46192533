"""Storage: conflicts found without a failing statement, so user data never reaches PostgreSQL's log (SPEC §2).

The server log is read where the embedded server writes it (``var/test-pg/pgdata/log``);
with a ``DATABASE_URL`` of your own the log checks are skipped (its log is elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import time
import typing as t
from pathlib import Path

import psycopg2
import pytest

from streamapp import accounts
from streamapp import storage
from streamapp.errors import Conflict
from streamapp.producer import Producer
from tests.conftest import ROOT
from tests.conftest import new_exec_id

SERVER_LOG = ROOT / "var" / "test-pg" / "pgdata" / "log"


@contextlib.contextmanager
def server_log() -> t.Iterator[list[str]]:
    """What the embedded server logs while the block runs (one string, once it ends)."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the server log of a DATABASE_URL server is not ours to read")
    start = SERVER_LOG.stat().st_size
    written: list[str] = []
    yield written
    with SERVER_LOG.open("rb") as log:
        log.seek(start)
        written.append(log.read().decode(errors="replace"))


def _marker() -> str:
    return "MARKER-" + secrets.token_hex(12).upper()  # the same in upper case, as a taken email is tried


def test_an_exec_id_in_use_is_a_conflict(db):
    exec_id = new_exec_id()
    with db.transaction() as cur:
        storage.insert_execution(cur, exec_id=exec_id, kind="workflow", name="a", owner_id="1")
    with db.transaction() as cur:
        with pytest.raises(Conflict, match=exec_id):
            storage.insert_execution(cur, exec_id=exec_id, kind="agent", name="b", owner_id="2", input={"x": 1})
        # The transaction goes on: nothing failed in it.
        cur.execute("SELECT kind, name FROM executions WHERE exec_id = %s", (exec_id,))
        assert cur.fetchall() == [("workflow", "a")]


def test_a_conflicting_create_leaves_no_trace_in_the_server_log(client, account):
    exec_id = new_exec_id()
    marker = _marker()
    url = "/api/v0/executions/workflows"
    assert client.post(url, json={"name": "first", "exec_id": exec_id}, headers=account.headers).status_code == 201
    body = {"name": "again", "exec_id": exec_id, "input": {"text": marker + "x" * 1_000_000, "key": marker}}
    with server_log() as written:
        r = client.post(url, json=body, headers=account.headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"
    assert marker not in written[0]


def test_a_taken_email_is_a_conflict_without_a_failing_statement(db):
    marker = _marker()
    email = f"{marker}@example.com"
    with db.transaction() as cur:
        accounts.create_user(cur, email, "password-1")
    with server_log() as written, db.transaction() as cur:
        with pytest.raises(Conflict):
            accounts.create_user(cur, email.upper(), "password-2")
        cur.execute("SELECT 1")  # still usable
    assert marker not in written[0]


def test_the_server_logs_no_statement_text(database):
    """Whatever fails in it, the embedded server writes the error, never the statement or its values."""
    marker = _marker()
    with server_log() as written, contextlib.closing(psycopg2.connect(database)) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.execute("SELECT 1 / 0 WHERE %s IS NOT NULL", (marker,))
        conn.rollback()
        cur.execute("CREATE TEMP TABLE seen (key text PRIMARY KEY)")
        cur.execute("INSERT INTO seen VALUES (%s)", (marker,))
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute("INSERT INTO seen VALUES (%s)", (marker,))  # its DETAIL would name the key
        conn.rollback()
    assert "division by zero" in written[0]
    assert marker not in written[0]


@pytest.mark.parametrize(
    "name, value",
    [
        ("log_min_error_statement", "panic"),
        ("log_statement", "none"),
        ("log_error_verbosity", "terse"),
        ("log_min_duration_statement", "-1"),
        ("log_parameter_max_length_on_error", "0"),
    ],
)
def test_the_embedded_server_is_configured_not_to_log_statements(database, name, value):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("a DATABASE_URL server is configured by its operator")
    with contextlib.closing(psycopg2.connect(database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
        assert cur.fetchone() == (value,)


def test_the_log_is_where_the_tests_read_it():
    if os.environ.get("DATABASE_URL"):
        pytest.skip("no embedded server")
    assert Path(SERVER_LOG).is_file()


# -- wake-up payloads and the commit that waits for no flush (SPEC §3) --------------------------


@pytest.mark.parametrize(
    "payload, woken",
    [
        ("e-1:42", ("e-1", 42)),
        (storage.wake_payload("a_b-9", 7), ("a_b-9", 7)),
        ("e-1:", None),
        ("e-1:x", None),
        ("e-1:²", None),  # str.isdigit() takes it; int() does not
        ("e-1", None),
    ],
)
def test_wake_payloads_read_back_and_anything_else_is_ignored(payload, woken):
    assert storage.parse_wake(payload) == woken


def _notifications(conn: t.Any, deadline_s: float = 10.0) -> t.Iterator[str]:
    """Payloads as they arrive on a listening connection, until the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
        conn.poll()
        while conn.notifies:
            yield conn.notifies.pop(0).payload


@pytest.mark.parametrize("appends", [1, 2], ids=["locking path", "one-round-trip path"])
def test_both_append_paths_wake_with_the_payload_storage_writes(database, db, workflow, appends):
    producer = Producer(db)
    with contextlib.closing(psycopg2.connect(database)) as conn:
        conn.autocommit = True
        conn.cursor().execute(f"LISTEN {storage.CHANNEL}")
        for _ in range(appends):  # the second append is built in SQL, by format()
            last_id = producer.append_events(workflow, [{"type": "progress", "data": {}}]).last_id
        expected = storage.wake_payload(workflow, last_id)
        assert expected in _notifications(conn)
        assert storage.parse_wake(expected) == (workflow, last_id)


def test_async_commit_lasts_only_for_its_transaction(db):
    with db.transaction() as cur:
        cur.execute(storage.async_commit("SELECT current_setting('synchronous_commit')"))
        assert cur.fetchone() == ("off",)
    with db.transaction() as cur:
        cur.execute("SELECT current_setting('synchronous_commit')")
        assert cur.fetchone() == ("on",)


# -- executions and their ids, read back ----------------------------------------------------------


def test_an_execution_is_found_under_its_own_kind_only(db, producer, account):
    exec_id = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    with db.autocommit() as cur:
        found = storage.get_execution(cur, "workflow", exec_id)
        assert found is not None and (found["exec_id"], found["kind"]) == (exec_id, "workflow")
        assert storage.get_execution(cur, None, exec_id) == found
        assert storage.get_execution(cur, "agent", exec_id) is None
        assert storage.get_execution(cur, "workflow", new_exec_id()) is None


def test_last_and_oldest_ids_follow_appends_and_deletions(db, producer, account):
    held = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    producer.append_events(held, [{"type": "progress", "data": {}}] * 3)
    empty = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    with db.autocommit() as cur:
        assert storage.last_event_ids(cur, [held, empty, new_exec_id()]) == {held: 3, empty: 0}
        assert (storage.oldest_event_id(cur, held), storage.oldest_event_id(cur, empty)) == (1, None)
        cur.execute("DELETE FROM events WHERE exec_id = %s AND id <= 2", (held,))  # what retention does
        assert storage.oldest_event_id(cur, held) == 3
        assert storage.last_event_ids(cur, [held]) == {held: 3}
