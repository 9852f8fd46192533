"""The pool: units of work commit or roll back and give their connection back; under outages
(SPEC §2 "Robustness"): 503 with Retry-After, one log line, reconnects.

A stopped and restarted server is in tests/live/test_outage.py; here the
outages are an address where nothing listens and backends terminated under
the pool, on the suite's real PostgreSQL.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import threading

import psycopg2
import pytest

from streamapp.db import Database
from streamapp.errors import problem
from tests.conftest import free_port

NOWHERE = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"


def _unavailable(exc: BaseException) -> None:
    """``exc`` answers 503 with Retry-After and the `unavailable` problem body."""
    body, status, headers = problem(exc)
    assert status == 503, exc
    assert body["error"]["code"] == "unavailable"
    assert "127.0.0.1" not in body["error"]["message"]  # nothing about the server leaks
    assert 1 <= int(headers["Retry-After"]) <= 10


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streamapp.db"]


def _run(db: Database, sql: str = "SELECT 1") -> BaseException | None:
    try:
        with db.transaction() as cur:
            cur.execute(sql)
    except Exception as exc:  # the test inspects what the pool raised
        return exc
    return None


def _terminate(admin_url: str, application_name: str) -> int:
    with psycopg2.connect(admin_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        return int(cur.fetchone()[0])


@pytest.fixture
def own_pool(database: str):
    name = f"test-db-{secrets.token_hex(4)}"
    db = Database(database, 2, application_name=name)
    yield db, name
    db.close()


def test_an_unreachable_server_is_unavailable_not_a_driver_error():
    db = Database(NOWHERE, 2)
    exc = _run(db)
    assert exc is not None
    _unavailable(exc)


@pytest.mark.parametrize("use", ["transaction", "autocommit", "connection"])
def test_every_way_to_use_the_pool_reports_the_outage(use):
    db = Database(NOWHERE, 2)
    with pytest.raises(Exception) as raised, getattr(db, use)():
        pass
    _unavailable(raised.value)


def test_an_outage_is_logged_once_however_many_requests_fail(caplog):
    caplog.set_level(logging.WARNING, logger="streamapp.db")
    db = Database(NOWHERE, 2)
    for _ in range(5):
        assert _run(db) is not None
    lines = _outage_lines(caplog)
    assert len(lines) == 1, lines
    assert "unavailable" in lines[0]
    assert not any(r.exc_info for r in caplog.records)  # a line, not a traceback


def test_a_terminated_connection_is_dropped_and_the_pool_reconnects(own_pool, database, caplog):
    caplog.set_level(logging.WARNING, logger="streamapp.db")
    db, name = own_pool
    assert _run(db) is None
    assert _terminate(database, name) == 1
    failed = _run(db)  # the idle connection was dead; nothing could know before using it
    assert failed is not None
    _unavailable(failed)
    assert _run(db) is None  # a new connection, at once
    with db.transaction() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    lines = _outage_lines(caplog)
    assert len(lines) == 2, lines  # the outage began, and it ended
    assert "unavailable" in lines[0] and "available again" in lines[1]


def test_a_failing_statement_is_not_an_outage(own_pool, caplog):
    caplog.set_level(logging.WARNING, logger="streamapp.db")
    db, _ = own_pool
    assert isinstance(_run(db, "SELEC 1"), psycopg2.errors.SyntaxError)
    cancelled = _run(db, "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
    assert isinstance(cancelled, psycopg2.errors.QueryCanceled)  # an OperationalError, but no outage
    assert _run(db) is None
    assert _outage_lines(caplog) == []


def test_a_pool_out_of_connections_is_unavailable(database):
    db = Database(database, 1, pool_timeout_s=0.2)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with db.connection():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        exc = _run(db)
        assert exc is not None
        _unavailable(exc)
    finally:
        release.set()
        holder.join()
    assert _run(db) is None
    db.close()


PATCHED_POOL = """
from gevent import monkey
monkey.patch_all()
import gevent, gevent.lock
from streamapp.db import Database
db = Database({url!r}, 1, pool_timeout_s=5)
assert isinstance(db._slots, gevent.lock.BoundedSemaphore), type(db._slots)
order = []
def hold():
    with db.connection():
        order.append("held")
        gevent.sleep(0.2)
    order.append("released")
def wait():
    with db.connection() as conn:
        order.append("got")
        conn.cursor().execute("SELECT 1")
gevent.joinall([gevent.spawn(hold), gevent.spawn(wait)], raise_error=True)
assert order == ["held", "released", "got"], order
"""


def test_in_a_gevent_worker_the_pool_waits_on_gevents_semaphore(database):
    # A gevent worker's greenlets wait for a connection on the hub; one waiting greenlet never blocks
    # the one that holds the connection. Run in a process of its own: patching is process-wide.
    done = subprocess.run(
        [sys.executable, "-c", PATCHED_POOL.format(url=database)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_with_threads_the_pool_waits_on_the_standard_semaphore(database):
    db = Database(database, 1)
    assert isinstance(db._slots, type(threading.BoundedSemaphore(1)))
    assert _run(db) is None
    db.close()


def test_ping_says_false_during_an_outage():
    assert Database(NOWHERE, 1).ping() is False


def test_every_endpoint_of_an_app_without_its_database_answers_503(make_client):
    client = make_client(database_url=NOWHERE)
    bearer = {"Authorization": "Bearer sa_0123456789ab_" + "x" * 43}
    answers = [
        client.post("/api/v0/auth/login", json={"email": "a@example.com", "password": "pw"}),
        client.get("/api/v0/executions/workflows", headers=bearer),
        client.get("/api/v0/executions/workflows/some-id", headers=bearer),
        client.post("/api/v0/executions/workflows", json={"name": "wf"}, headers=bearer),
        client.get("/readyz"),
    ]
    for answer in answers:
        assert answer.status_code == 503, (answer.request.path, answer.get_data(as_text=True))
    for answer in answers[:-1]:
        assert answer.json["error"]["code"] == "unavailable"
        assert int(answer.headers["Retry-After"]) >= 1


# -- units of work --------------------------------------------------------------------------------


def _exists(db: Database, name: str) -> bool:
    with db.transaction() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])


def test_a_transaction_commits_on_success_and_rolls_back_on_error(own_pool, db):
    pool, _ = own_pool
    kept, undone = f"kept_{secrets.token_hex(4)}", f"undone_{secrets.token_hex(4)}"
    try:
        with pool.transaction() as cur:
            cur.execute(f"CREATE TABLE {kept} (n int)")
        with pytest.raises(RuntimeError, match="the caller's own failure"), pool.transaction() as cur:
            cur.execute(f"CREATE TABLE {undone} (n int)")
            raise RuntimeError("the caller's own failure")
        # Read on another pool's connection: what was committed, and only that.
        assert _exists(db, kept) and not _exists(db, undone)
    finally:
        with pool.transaction() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {kept}")


def test_autocommit_statements_stay_when_the_caller_fails_after_them(own_pool, db):
    pool, _ = own_pool
    name = f"auto_{secrets.token_hex(4)}"
    try:
        with pytest.raises(RuntimeError), pool.autocommit() as cur:
            cur.execute(f"CREATE TABLE {name} (n int)")
            raise RuntimeError("after the statement")
        assert _exists(db, name)
    finally:
        with pool.transaction() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_a_failed_unit_of_work_gives_its_connection_back(database):
    db = Database(database, 1, pool_timeout_s=2)
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError), db.transaction() as cur:
                cur.execute("SELECT 1")
                raise RuntimeError("the caller's own failure")
            assert isinstance(_run(db, "SELECT 1/0"), psycopg2.errors.DivisionByZero)
        # One connection in the pool: had any failure kept it, this would wait 2 s and be a 503.
        assert _run(db) is None
    finally:
        db.close()
