"""The worker's hub under failure: lost listener, PostgreSQL restart, slow readers, limits (issue 4)."""

from __future__ import annotations

import re
import socket

import psutil
import psycopg2
import pytest
import requests

from streamapp.db import Database
from streamapp.producer import Producer
from tests.conftest import AuthActions
from tests.conftest import live_server
from tests.conftest import until
from tests.live.conftest import retrying
from tests.sse import Stream

pytestmark = pytest.mark.live

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _progress(n: int) -> dict:
    return {"type": "progress", "data": {"n": n}}


def _metric(server, name: str) -> float:
    """The metric summed over its label values (open streams are counted by kind)."""
    text = requests.get(server.url + "/metrics", timeout=5).text
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _stream_url(server, exec_id: str) -> str:
    return server.api(f"/executions/workflows/{exec_id}/stream")


def _listener_pids(dsn: str) -> list[int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'streamapp-listener' "
            "AND datname = current_database()"
        )
        return [r[0] for r in cur.fetchall()]


def test_killed_listener_loses_nothing(server, database, account, workflow, producer):
    with Stream(_stream_url(server, workflow), account.headers) as stream:
        stream.next_item()
        producer.append_events(workflow, [_progress(1)])
        assert stream.next_frame().id == "1"
        with psycopg2.connect(database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'streamapp-listener' AND datname = current_database()"
            )
            assert cur.rowcount >= 1
        for n in range(2, 12):
            producer.append_events(workflow, [_progress(n)])
        producer.append_events(workflow, [COMPLETE])
        ids = [int(f.id) for f in stream.rest()]
    assert ids == list(range(2, 13))
    until(lambda: len(_listener_pids(database)) == 1, what="listener reconnected")
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200


def test_one_read_per_event_whatever_the_stream_count(server, auth, account, workflow, producer):
    streams = [Stream(_stream_url(server, workflow), account.headers) for _ in range(20)]
    try:
        for s in streams:
            s.next_item()
        reads_before = _metric(server, "streamapp_event_reads_total")
        for n in range(10):
            producer.append_events(workflow, [_progress(n)])
            for s in streams:
                assert s.next_frame().id == str(n + 1)
        reads = _metric(server, "streamapp_event_reads_total") - reads_before
    finally:
        for s in streams:
            s.close()
    # Other tests share this server, so allow their reads; 20 streams would need 200 without sharing.
    assert reads <= 10 + 5


def test_notify_disabled_still_delivers_within_poll(database, tmp_path, account, workflow, producer):
    env = {"STREAMAPP_NOTIFY": "false", "STREAMAPP_POLL_MS": "250"}
    with live_server(database, tmp_path, env) as live:
        with Stream(_stream_url(live, workflow), account.headers) as stream:
            stream.next_item()
            quiet = Producer(Database(database, 2), notify=False)
            for n in range(5):
                quiet.append_events(workflow, [_progress(n)])
                assert stream.next_frame(deadline_s=5).id == str(n + 1)
            quiet.append_events(workflow, [COMPLETE])
            assert [f.event for f in stream.rest()] == ["complete"]
        assert _metric(live, "streamapp_notifications_total") == 0


def test_worker_limit_answers_503_with_retry_after(database, tmp_path, account, workflow):
    env = {"STREAMAPP_MAX_STREAMS_PER_WORKER": "2", "STREAMAPP_HEARTBEAT_S": "1"}
    with live_server(database, tmp_path, env) as live:
        with Stream(_stream_url(live, workflow), account.headers), Stream(_stream_url(live, workflow), account.headers):
            refused = requests.get(_stream_url(live, workflow), headers=account.headers, timeout=5)
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "unavailable"
        until(lambda: _metric(live, "streamapp_open_streams") == 0, what="streams released")
        with Stream(_stream_url(live, workflow), account.headers) as again:
            assert again.response.status_code == 200


def test_stream_ends_at_its_lifetime_and_resumes(database, tmp_path, account, workflow, producer):
    env = {"STREAMAPP_STREAM_LIFETIME_S": "2", "STREAMAPP_HEARTBEAT_S": "0.5"}
    producer.append_events(workflow, [_progress(1)])
    with live_server(database, tmp_path, env) as live:
        with Stream(_stream_url(live, workflow), account.headers) as stream:
            assert [f.id for f in stream.rest()] == ["1"]  # ended by the server, not by us
        producer.append_events(workflow, [COMPLETE])
        with Stream(_stream_url(live, workflow), {**account.headers, "Last-Event-ID": "1"}) as resumed:
            assert [f.event for f in resumed.rest()] == ["complete"]


def _worker(live) -> psutil.Process:
    return psutil.Process(live.process.pid).children()[0]


def test_stalled_reader_is_disconnected_without_growing_memory(database, tmp_path, account, workflow, producer):
    env = {"STREAMAPP_SEND_TIMEOUT_S": "2"}
    with live_server(database, tmp_path, env) as live:
        host, port = live.url.removeprefix("http://").split(":")
        rss_before = _worker(live).memory_info().rss
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        path = f"/api/v0/executions/workflows/{workflow}/stream"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {account.token}\r\n\r\n".encode())
        try:
            until(lambda: _metric(live, "streamapp_open_streams") == 1, what="stream open")
            blob = "x" * 200_000
            for n in range(60):  # 12 MB the client never reads
                producer.append_events(workflow, [{"type": "progress", "data": {"n": n, "blob": blob}}])
            until(lambda: _metric(live, "streamapp_open_streams") == 0, what="stalled stream dropped")
            growth = _worker(live).memory_info().rss - rss_before
        finally:
            sock.close()
        assert growth < 40 * 1024 * 1024


def test_postgres_restart_keeps_streams_open_and_loses_nothing(tmp_path, own_postgres):
    pg = own_postgres
    db = Database(pg.url, 2)
    account = AuthActions(db).user()
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    env = {"STREAMAPP_POLL_MS": "250", "STREAMAPP_HEARTBEAT_S": "1"}
    with live_server(pg.url, tmp_path, env) as live:
        with Stream(_stream_url(live, exec_id), {**account.headers}) as stream:
            stream.next_item()
            producer.append_events(exec_id, [_progress(1)])
            assert stream.next_frame().id == "1"
            pg.stop()
            until(lambda: requests.get(live.url + "/readyz", timeout=5).status_code == 503, what="not ready")
            assert stream.next_item(5) == "ping"  # the stream waits through the outage
            pg.start()
            until(lambda: requests.get(live.url + "/readyz", timeout=5).status_code == 200, what="ready again")
            # The test's own pooled connections died with the restart; the first use may fail.
            for event in [_progress(n) for n in range(2, 6)] + [COMPLETE]:
                retrying(lambda event=event: producer.append_events(exec_id, [event]))
            ids = [int(f.id) for f in stream.rest()]
    db.close()
    assert ids == [2, 3, 4, 5, 6]


def test_graceful_shutdown_ends_streams_before_the_workers_are_killed(database, tmp_path, account, workflow, producer):
    producer.append_events(workflow, [_progress(1)])
    with live_server(database, tmp_path) as live:
        with Stream(_stream_url(live, workflow), account.headers) as stream:
            assert stream.next_frame().id == "1"
            live.process.terminate()
            # gunicorn would kill the worker after --graceful-timeout (5 s); the stream ends itself first.
            assert stream.rest() == []
            assert stream.ended
        live.process.wait(15)
    assert "Worker graceful timeout" not in live.log_text()
