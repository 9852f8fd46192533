"""Storage: conflicts found without a failing statement, so user data never reaches PostgreSQL's log (SPEC §2).

The server log is read where the embedded server writes it (``var/test-pg/pgdata/log``);
with a ``DATABASE_URL`` of your own the log checks are skipped (its log is elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import typing as t
from pathlib import Path

import psycopg2
import pytest

from streamapp import accounts
from streamapp import framing
from streamapp import storage
from streamapp.errors import Conflict
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


# -- frames read back (issue 10) -------------------------------------------------------------


def _stored_workflow(db: t.Any, producer: t.Any, account: t.Any, events: list[dict[str, t.Any]]) -> str:
    exec_id = t.cast(str, producer.create_execution("workflow", "w", account.user.get_id())["exec_id"])
    producer.append_events(exec_id, events)
    return exec_id


def test_frames_are_the_framing_modules_bytes_for_every_stored_event(db, producer, account):
    text = 'naïve ☃ \u2028 "quoted" \\ back'
    exec_id = _stored_workflow(
        db,
        producer,
        account,
        [
            {"type": "workflow_status", "data": {"status": "RUNNING"}},
            {"type": "warning", "data": {"code": "w", "message": text}},
            {"type": "custom_type", "data": {"lines": "one\ntwo\r\nthree"}},
        ],
    )
    with db.autocommit() as cur:
        frames, more = storage.frames_after(cur, exec_id, 0, 100)
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        stored = cur.fetchall()
    assert not more
    assert frames == [(i, kind, framing.stored_event_frame(i, kind, envelope)) for i, kind, envelope in stored]
    assert all(isinstance(frame, bytes) and isinstance(kind, str) for _, kind, frame in frames)


def test_an_envelope_with_a_line_break_in_the_table_still_frames_safely(db, producer, account):
    exec_id = _stored_workflow(db, producer, account, [{"type": "progress", "data": {}}] * 2)
    with db.transaction() as cur:  # not something a producer can write: a row edited by hand
        cur.execute(
            "UPDATE events SET envelope = %s WHERE exec_id = %s AND id = 1",
            ('{"a":1}\r\nid: 99\n\nevent: forged', exec_id),
        )
    with db.autocommit() as cur:
        frames, _ = storage.frames_after(cur, exec_id, 0, 100)
    assert frames[0][2] == b'id: 1\nevent: progress\ndata: {"a":1}\ndata: id: 99\ndata: \ndata: event: forged\n\n'
    assert frames[1][2].startswith(b"id: 2\nevent: progress\ndata: {")


def test_a_page_stops_near_its_byte_budget_and_says_more_follow(db, producer, account, monkeypatch):
    exec_id = _stored_workflow(db, producer, account, [{"type": "progress", "data": {"pad": "x" * 1000}}] * 10)
    monkeypatch.setattr(storage, "PAGE_BYTES", 3000)
    with db.autocommit() as cur:
        first, more = storage.frames_after(cur, exec_id, 0, 100)
        rest, more_after = storage.frames_after(cur, exec_id, first[-1][0], 100)
    assert (
        more
        and 2 <= len(first) <= 3
        and [i for i, _, _ in first + rest][: len(first) + 1] == list(range(1, len(first) + 2))
    )
    assert more_after


def test_no_frames_after_the_newest(db, producer, account):
    exec_id = _stored_workflow(db, producer, account, [{"type": "progress", "data": {}}])
    with db.autocommit() as cur:
        assert storage.frames_after(cur, exec_id, 1, 100) == ([], False)


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
    held = _stored_workflow(db, producer, account, [{"type": "progress", "data": {}}] * 3)
    empty = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    with db.autocommit() as cur:
        assert storage.last_event_ids(cur, [held, empty, new_exec_id()]) == {held: 3, empty: 0}
        assert (storage.oldest_event_id(cur, held), storage.oldest_event_id(cur, empty)) == (1, None)
        cur.execute("DELETE FROM events WHERE exec_id = %s AND id <= 2", (held,))  # what retention does
        assert storage.oldest_event_id(cur, held) == 3
        assert storage.last_event_ids(cur, [held]) == {held: 3}
