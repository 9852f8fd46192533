"""Retention on a live gunicorn: two workers prune in the background (``STREAMAPP_RETENTION_S``,
SPEC §9, issue 13); streams of a pruned execution reset and end (SPEC §5.5)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import live_server
from tests.sse import Stream
from tests.sse import parse
from tests.test_retention import _age
from tests.test_retention import _execution
from tests.test_retention import _ids

pytestmark = pytest.mark.live

RUNNING = {"type": "workflow_status", "data": {"status": "RUNNING"}}
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


@pytest.fixture(scope="module")
def live(database, tmp_path_factory):
    # Events of executions ended over a second ago go, checked every second or so.
    env = {"STREAMAPP_RETENTION_S": "1"}
    with live_server(database, tmp_path_factory.mktemp("retention"), env, workers=2) as server:
        yield server


def _frames(live, account, exec_id: str):
    r = requests.get(live.api(f"/executions/workflows/{exec_id}/stream"), headers=account.headers, timeout=10)
    assert r.status_code == 200
    return parse(r.content)[0]


def test_ended_executions_are_pruned_in_the_background_and_running_ones_kept(live, producer, account, db):
    ended = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    producer.append_events(ended, [RUNNING, RUNNING, COMPLETE])
    running = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    producer.append_events(running, [RUNNING])
    # Read what a client would see until the workers' retention has run (bounded by a deadline).
    end = time.monotonic() + 30
    while (frames := _frames(live, account, ended))[0].event != "stream_reset":
        assert [f.id for f in frames] == ["1", "2", "3"]
        assert time.monotonic() < end, "the events were never pruned"
        time.sleep(0.2)
    assert [(f.id, f.event) for f in frames] == [("3", "stream_reset")]
    assert json.loads(frames[0].data) == {"reason": "cursor_expired", "newest_id": 3, "oldest_id": 0}
    with db.transaction() as cur:
        cur.execute("SELECT exec_id, count(*) FROM events WHERE exec_id = ANY(%s) GROUP BY 1", ([ended, running],))
        assert dict(cur.fetchall()) == {running: 1}
        cur.execute("SELECT status, last_event_id FROM executions WHERE exec_id = %s", (ended,))
        assert cur.fetchone() == ("SUCCESS", 3)
    assert "Traceback" not in live.log_text()


# -- streams of a pruned execution (SPEC §9, §5.5) ------------------------------------------------


def _stream_url(server, exec_id: str) -> str:
    return server.api(f"/executions/workflows/{exec_id}/stream")


@pytest.mark.parametrize("cursor", ["1", None])
def test_a_cursor_below_the_pruned_terminal_id_resets_to_it_and_ends(server, runner, db, producer, account, cursor):
    exec_id = _execution(producer, account, COMPLETE, n=3)
    _age(db, exec_id)
    assert runner.invoke(args=["events", "prune", "--older-than", "7d"]).exit_code == 0
    assert _ids(db, exec_id) == []
    headers = {**account.headers, **({"Last-Event-ID": cursor} if cursor else {})}
    with Stream(_stream_url(server, exec_id), headers) as s:
        assert s.response.status_code == 200
        reset = s.next_frame()
        assert (reset.id, reset.event) == ("4", "stream_reset")
        assert json.loads(reset.data) == {"reason": "cursor_expired", "newest_id": 4, "oldest_id": 0}
        assert s.rest() == [] and s.ended
    # The client's cursor is now the terminal id: its reconnect is told to stop.
    again = requests.get(_stream_url(server, exec_id), headers={**account.headers, "Last-Event-ID": "4"}, timeout=10)
    assert (again.status_code, again.content) == (204, b"")


def test_a_half_pruned_ended_execution_resets_then_replays_to_its_end(server, db, producer, account):
    exec_id = _execution(producer, account, COMPLETE, n=4)
    with db.transaction() as cur:  # where an interrupted prune leaves it: oldest ids first
        cur.execute("DELETE FROM events WHERE exec_id = %s AND id <= 2", (exec_id,))
    with Stream(_stream_url(server, exec_id), {**account.headers, "Last-Event-ID": "1"}) as s:
        reset = s.next_frame()
        assert (reset.id, reset.event) == ("2", "stream_reset")
        assert json.loads(reset.data) == {"reason": "cursor_expired", "newest_id": 5, "oldest_id": 3}
        frames = [(f.id, f.event) for f in s.rest()]
        assert frames == [("3", "workflow_status"), ("4", "workflow_status"), ("5", "complete")]


def test_an_ended_execution_that_was_not_pruned_replays_without_a_reset(server, producer, account):
    exec_id = _execution(producer, account, COMPLETE, n=2)
    with Stream(_stream_url(server, exec_id), {**account.headers, "Last-Event-ID": "1"}) as s:
        assert [(f.id, f.event) for f in s.rest()] == [("2", "workflow_status"), ("3", "complete")]
