"""Abandoned executions over two gunicorn workers that both sweep (SPEC §2, issue 13).

Every worker's hub runs the sweeper; the tests read the streams until the
``TIMED_OUT`` error arrives and count what the table holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT
from tests.conftest import SECRET
from tests.conftest import free_port
from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

TIMEOUT_S = 3
RUNNING = {"type": "agent_status", "data": {"status": "RUNNING"}}


@pytest.fixture(scope="module")
def live(database, tmp_path_factory):
    env = {"STREAMAPP_EXECUTION_TIMEOUT_S": str(TIMEOUT_S), "STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_POLL_MS": "250"}
    with live_server(database, tmp_path_factory.mktemp("sweeper"), env, workers=2) as server:
        yield server


def _new(producer, account, *events) -> str:
    exec_id = producer.create_execution("agent", "a", account.user.get_id())["exec_id"]
    if events:
        producer.append_events(exec_id, list(events))
    return exec_id


def _url(live, exec_id: str) -> str:
    return live.api(f"/executions/agents/{exec_id}/stream")


def _errors(db, exec_id: str) -> list[dict]:
    with db.transaction() as cur:
        cur.execute("SELECT envelope FROM events WHERE exec_id = %s AND type = 'error'", (exec_id,))
        return [json.loads(row[0])["data"] for row in cur.fetchall()]


def test_idle_executions_each_get_exactly_one_timed_out(live, producer, account, db):
    streams: dict[str, Stream] = {}
    try:
        # Streams on both workers: both hubs, so both sweepers, are running and racing.
        while len(streams) < 8 or live.workers_holding_streams() < 2:
            assert len(streams) < 40, "the streams never spread over both workers"
            exec_id = _new(producer, account, *([RUNNING] if len(streams) % 2 else []))
            streams[exec_id] = Stream(_url(live, exec_id), account.headers)
            assert streams[exec_id].response.status_code == 200
            streams[exec_id].next_item()
        for exec_id, stream in streams.items():
            frames = stream.rest()
            errors = [f for f in frames if f.event == "error"]
            assert len(errors) == 1 and frames[-1] is errors[0] and stream.ended
            data = errors[0].json["data"]
            assert (data["status"], data["error"]["code"]) == ("TIMED_OUT", "timed_out")
            assert _errors(db, exec_id) == [data]
            again = requests.get(
                _url(live, exec_id), headers={**account.headers, "Last-Event-ID": errors[0].id}, timeout=10
            )
            assert again.status_code == 204
    finally:
        for stream in streams.values():
            stream.close()
    assert "Traceback" not in live.log_text()


def test_an_active_execution_does_not_time_out(live, producer, account, db):
    exec_id = _new(producer, account, RUNNING)
    with Stream(_url(live, exec_id), account.headers) as s:
        assert s.next_frame().id == "1"
        # Twice the timeout of steady activity: every append is accepted, none meets an ended execution.
        end = time.monotonic() + 2 * TIMEOUT_S
        while time.monotonic() < end:
            last = producer.append_events(exec_id, [RUNNING]).last_id
            assert s.next_frame().id == str(last)
            time.sleep(TIMEOUT_S / 6)  # the producer's pace, not a wait for an event
        assert _errors(db, exec_id) == []
        # Once it goes quiet, it times out like any other.
        [error] = s.rest()
        assert (error.event, error.id) == ("error", str(last + 1))
        assert error.json["data"]["status"] == "TIMED_OUT"


def test_a_worker_that_no_request_reached_still_sweeps(database, tmp_path, producer, account, db):
    """The hub, and with it the sweeper, starts with the worker when background jobs are on."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "DATABASE_URL", "SECRET_KEY"))},
        "DATABASE_URL": database,
        "SECRET_KEY": SECRET,
        "STREAMAPP_EXECUTION_TIMEOUT_S": str(TIMEOUT_S),
    }
    exec_id = _new(producer, account)
    log = tmp_path / "gunicorn.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "app:app",
        "--bind",
        f"127.0.0.1:{free_port()}",
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while not _errors(db, exec_id):  # no HTTP request is ever sent to this server
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < end, f"never swept:\n{log.read_text()}"
            time.sleep(0.2)
        assert [e["status"] for e in _errors(db, exec_id)] == ["TIMED_OUT"]
    finally:
        process.terminate()
        process.wait(15)
