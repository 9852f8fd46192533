"""``STREAMAPP_RETENTION_S``: two gunicorn workers prune in the background (SPEC §9, issue 13)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.conftest import live_server
from tests.sse import parse

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
