"""SIGTERM: no new stream, open ones end with a jittered ``retry:``, a prompt exit, nothing lost (SPEC §5.4, §9).

gunicorn's ``graceful_timeout`` is 60 s here, so a worker that exits within
a few seconds did so because its streams ended on their own, not because
gunicorn gave up waiting and killed them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import typing as t
from pathlib import Path

import psutil
import pytest

from streamapp import client
from tests.conftest import ROOT
from tests.conftest import SECRET
from tests.conftest import LiveServer
from tests.conftest import _wait_ready
from tests.conftest import free_port
from tests.sse import Frame
from tests.sse import Stream

pytestmark = pytest.mark.live

GRACEFUL_TIMEOUT_S = 60
EXIT_DEADLINE_S = 20  # a third of graceful_timeout: streams that waited for it would blow this
RETRY_MS = 2000


@contextlib.contextmanager
def _gunicorn(database: str, tmp: Path, workers: int = 1) -> t.Iterator[LiveServer]:
    """Like ``live_server``, with a long ``graceful_timeout`` and the master left to the test."""
    port = free_port()
    log = tmp / f"gunicorn-{port}.log"
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "SECRET_KEY": SECRET,
        "STREAMAPP_ENV": "development",
        "STREAMAPP_POOL_SIZE": "4",
        "STREAMAPP_RETRY_MS": str(RETRY_MS),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _worker(server: LiveServer) -> psutil.Process:
    (worker,) = psutil.Process(server.process.pid).children()
    return worker


def _url(server: LiveServer, exec_id: str) -> str:
    return server.api(f"/executions/workflows/{exec_id}/stream")


def _executions(producer, account, n: int, events: int) -> list[str]:
    exec_ids = []
    for _ in range(n):
        exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
        _append(producer, exec_id, events)
        exec_ids.append(exec_id)
    return exec_ids


def _append(producer, exec_id: str, events: int, complete: bool = False) -> None:
    batch = [{"type": "warning", "data": {"code": "n", "message": str(n)}} for n in range(events)]
    if complete:
        batch.append({"type": "complete", "data": {"status": "SUCCESS"}})
    producer.append_events(exec_id, batch)


def _open(server: LiveServer, account, exec_ids: list[str], last_id: str) -> list[Stream]:
    streams = []
    for exec_id in exec_ids:
        stream = Stream(_url(server, exec_id), account.headers)
        assert stream.response.status_code == 200, stream.response.text
        assert [f.id for f in stream.frames_until(lambda f: f.id == last_id)][-1] == last_id
        streams.append(stream)
    return streams


def _ending(stream: Stream, deadline_s: float = 10.0) -> list[t.Any]:
    """Every item the server sends until it ends the stream (frames, retry values, comments)."""
    items = []
    while True:
        try:
            items.append(stream.next_item(deadline_s))
        except EOFError:
            return items


def _exits(process: psutil.Process) -> bool:
    try:
        process.wait(EXIT_DEADLINE_S)
    except psutil.TimeoutExpired:
        return False
    return True


def _shutdown_retry(items: list[t.Any]) -> int:
    """The ``retry:`` a stream got as its last item; what comes before it may only be pings."""
    assert items, "the stream ended without a retry: frame"
    *before, last = items
    assert isinstance(last, Frame) and last.retry is not None, items
    assert all(item == "ping" for item in before), items
    return last.retry


def test_sigterm_ends_a_workers_streams_with_a_jittered_retry_and_it_exits_early(database, tmp_path, producer, account):
    exec_ids = _executions(producer, account, 4, events=2)
    with _gunicorn(database, tmp_path) as server:
        worker = _worker(server)
        streams = _open(server, account, exec_ids, "2")
        worker.send_signal(signal.SIGTERM)
        retries = [_shutdown_retry(_ending(stream)) for stream in streams]
        assert _exits(worker), f"the worker was still running {EXIT_DEADLINE_S} s after SIGTERM"
        assert all(RETRY_MS // 2 <= retry <= RETRY_MS * 3 // 2 for retry in retries), retries
        assert len(set(retries)) > 1, retries  # jittered: 4 equal draws from 2,001 values would be a bug
        for stream in streams:
            stream.close()

        # The master starts a new worker; each client resumes there with nothing lost or repeated.
        _wait_ready(server)
        assert _worker(server).pid != worker.pid
        for exec_id in exec_ids:
            _append(producer, exec_id, 2, complete=True)
        for exec_id in exec_ids:
            with Stream(_url(server, exec_id), {**account.headers, "Last-Event-ID": "2"}) as resumed:
                assert [f.id for f in resumed.rest()] == ["3", "4", "5"]
        log = server.log_text()
    for exec_id in exec_ids:
        (end,) = [line for line in log.splitlines() if f"exec_id={exec_id} " in line and "reason=shutdown" in line]
        assert "events_sent=2 last_id=2" in end


def test_a_worker_that_got_sigterm_refuses_new_streams_with_503_and_retry_after(database, tmp_path, producer, account):
    watched, refused = _executions(producer, account, 2, events=1)
    with _gunicorn(database, tmp_path) as server:
        worker = _worker(server)
        (stream,) = _open(server, account, [watched], "1")
        # A keep-alive connection to this worker: gunicorn keeps serving it after SIGTERM,
        # so the next request on it reaches the worker that is shutting down, whatever the timing.
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        worker.send_signal(signal.SIGTERM)
        _shutdown_retry(_ending(stream))  # the worker has begun shutting down
        stream.close()
        conn.request("GET", f"/api/v0/executions/workflows/{refused}/stream", headers=account.headers)
        answer = conn.getresponse()
        body = json.loads(answer.read())
        conn.close()
        assert answer.status == 503
        assert body["error"]["code"] == "unavailable"
        assert 1 <= int(answer.getheader("Retry-After")) <= 5
        assert answer.getheader("Connection") == "close"
        assert _exits(worker)
        _wait_ready(server)
        metrics_text = _get(server, "/metrics")  # the new worker's sum keeps the old one's counters
    assert 'streamapp_streams_refused_total{reason="shutdown"} 1.0' in metrics_text
    assert f"exec_id={watched} " in server.log_text()


def _get(server: LiveServer, path: str) -> str:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_a_deploy_ends_every_stream_and_clients_resume_on_the_new_server_with_nothing_lost(
    database, tmp_path, producer, account
):
    """SIGTERM to the master (a deploy): both workers end their streams and exit; follow() resumes."""
    exec_ids = _executions(producer, account, 6, events=3)
    with _gunicorn(database, tmp_path, workers=2) as old:
        master = psutil.Process(old.process.pid)
        streams = _open(old, account, exec_ids, "3")
        master.send_signal(signal.SIGTERM)
        for stream in streams:
            _shutdown_retry(_ending(stream))
            stream.close()
        assert _exits(master), f"gunicorn was still running {EXIT_DEADLINE_S} s after SIGTERM"
    for exec_id in exec_ids:
        _append(producer, exec_id, 3, complete=True)
    with _gunicorn(database, tmp_path, workers=2) as new:
        for exec_id in exec_ids:
            events = list(client.follow(_url(new, exec_id), token=account.token, last_event_id=3, max_wait=30))
            assert [e.id for e in events] == [4, 5, 6, 7]
            assert events[-1].type == "complete"
