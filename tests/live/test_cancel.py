"""Cancel on a live gunicorn (SPEC §2): raced by many requests over two workers, exactly one error
event (issue 13); an open stream receives it and ends."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.conftest import live_server
from tests.sse import Stream
from tests.sse import parse

pytestmark = pytest.mark.live

RACERS = 12
RUNNING = {"type": "task_status", "data": {"status": "RUNNING"}}
WORKFLOW_RUNNING = {"type": "workflow_status", "data": {"status": "RUNNING"}}
CANCELED = {"status": "CANCELED", "error": {"message": "canceled", "code": "canceled"}}


@pytest.fixture(scope="module")
def live(database, tmp_path_factory):
    with live_server(database, tmp_path_factory.mktemp("cancel"), workers=2) as server:
        yield server


def _race(url: str, headers: dict[str, str]) -> list[tuple[int, str]]:
    """POST cancel from RACERS threads at once, each on its own connection; (status, reason) of each."""
    start = threading.Barrier(RACERS)
    results: list[tuple[int, str]] = []

    def cancel(n: int) -> None:
        with requests.Session() as session:
            start.wait()
            r = session.post(url, json={"reason": f"racer {n}"}, headers=headers, timeout=30)
        results.append((r.status_code, f"racer {n}"))

    threads = [threading.Thread(target=cancel, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("round_", range(5))
def test_racing_cancels_append_exactly_one_error(live, producer, account, db, round_):
    exec_id = producer.create_execution("task", "t", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [RUNNING])
    results = _race(live.api(f"/executions/tasks/{exec_id}/cancel"), account.headers)
    assert sorted(status for status, _ in results) == [200] + [409] * (RACERS - 1)
    [winner] = [reason for status, reason in results if status == 200]
    with db.transaction() as cur:
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        rows = cur.fetchall()
    assert [(i, typ) for i, typ, _ in rows] == [(1, "task_status"), (2, "error")]
    assert json.loads(rows[1][2])["data"] == {
        "status": "CANCELED",
        "error": {"message": winner, "code": "canceled"},
    }
    # What a stream replays: the one error, then the end.
    body = requests.get(live.api(f"/executions/tasks/{exec_id}/stream"), headers=account.headers, timeout=10)
    frames, _ = parse(body.content)
    assert [(f.id, f.event) for f in frames] == [("1", "task_status"), ("2", "error")]


# -- its streams receive the event like any other -------------------------------------------------


def test_an_open_stream_gets_the_cancel_and_ends(server, account, workflow, producer):
    producer.append_events(workflow, [WORKFLOW_RUNNING])
    url = server.api(f"/executions/workflows/{workflow}/stream")
    with Stream(url, account.headers) as s:
        assert s.frames_until(lambda f: f.id == "1")[-1].event == "workflow_status"
        r = requests.post(server.api(f"/executions/workflows/{workflow}/cancel"), headers=account.headers, timeout=10)
        assert r.status_code == 200
        [frame] = s.rest()
        assert (frame.id, frame.event, frame.json["data"]) == ("2", "error", CANCELED)
    again = requests.get(url, headers={**account.headers, "Last-Event-ID": "2"}, timeout=10)
    assert again.status_code == 204
