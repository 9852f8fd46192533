"""A PostgreSQL outage over a real gunicorn (SPEC §2 "Robustness", issue 11).

The test stops its own embedded PostgreSQL: every endpoint answers 503 with
``Retry-After`` and the ``unavailable`` problem body (streams before their
first byte), the log says so once instead of a traceback per request, an
open stream waits or ends cleanly, and once the server is started again the
same gunicorn serves again and the stream resumes with nothing lost.
"""

from __future__ import annotations

import contextlib
import re
import time
import typing as t

import pytest
import requests

from streamapp.db import Database
from streamapp.producer import Producer
from tests.conftest import Account
from tests.conftest import AuthActions
from tests.conftest import LiveServer
from tests.conftest import live_server
from tests.live.conftest import retrying
from tests.sse import Stream

pytestmark = pytest.mark.live

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}
# Access-log lines look like `127.0.0.1 "GET /path HTTP/1.1" 503 …`; anything else is the app or gunicorn.
_ACCESS_LINE = re.compile(r'^\S+ "[A-Z]+ \S* HTTP/[\d.]+" \d{3} ')


def until_served(send: t.Callable[[], requests.Response], deadline_s: float = 30.0) -> requests.Response:
    """Send a request until it is not refused with 503, honouring ``Retry-After`` as a client does."""
    end = time.monotonic() + deadline_s
    while True:
        answer = send()
        if answer.status_code != 503 or time.monotonic() > end:
            return answer
        time.sleep(min(int(answer.headers.get("Retry-After", "1")), max(0.0, end - time.monotonic())))


def _requests(live: LiveServer, account: Account, exec_id: str) -> dict[str, t.Callable[[], requests.Response]]:
    """One request of every endpoint kind that touches the database."""
    api, headers = live.api, account.headers
    base = f"/executions/workflows/{exec_id}"
    return {
        "login": lambda: requests.post(
            api("/auth/login"), json={"email": account.email, "password": account.password}, timeout=10
        ),
        "create": lambda: requests.post(api("/executions/workflows"), json={"name": "wf"}, headers=headers, timeout=10),
        "get": lambda: requests.get(api(base), headers=headers, timeout=10),
        "list": lambda: requests.get(api("/executions/workflows"), headers=headers, timeout=10),
        "events": lambda: requests.post(
            api(f"{base}/events"), json={"events": [{"type": "progress", "data": {}}]}, headers=headers, timeout=10
        ),
        "chunks": lambda: requests.post(api(f"{base}/chunks"), json={"text": "hi"}, headers=headers, timeout=10),
        "stream-ticket": lambda: requests.post(api(f"{base}/stream-ticket"), headers=headers, timeout=10),
        "stream": lambda: requests.get(api(f"{base}/stream"), headers=headers, timeout=10, stream=True),
        "stream-tickets": lambda: requests.post(
            api("/stream-tickets"), json={"ids": [f"workflows/{exec_id}"]}, headers=headers, timeout=10
        ),
        "streams": lambda: requests.get(
            api("/streams"), params={"ids": f"workflows/{exec_id}"}, headers=headers, timeout=10, stream=True
        ),
    }


def _outage_lines(log: str) -> list[str]:
    """Every line of the log but access lines and informational ones (a stream's end, say)."""
    return [
        line
        for line in log.splitlines()
        if line.strip() and not _ACCESS_LINE.match(line) and "[INFO]" not in line and "[DEBUG]" not in line
    ]


def test_an_outage_is_503_everywhere_logged_once_and_ends_by_itself(tmp_path, own_postgres):
    pg = own_postgres
    db = Database(pg.url, 2)
    account = AuthActions(db).user()
    producer = Producer(db)
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "progress", "data": {"n": 1}}])
    env = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_POLL_MS": "250"}
    with live_server(pg.url, tmp_path, env) as live:
        calls = _requests(live, account, exec_id)
        ticket = calls["stream-ticket"]().json()["ticket"]
        stream_url = live.api(f"/executions/workflows/{exec_id}/stream")
        with Stream(stream_url, account.headers) as open_stream:
            assert open_stream.next_frame().id == "1"
            log_before = len(live.log_text())

            pg.stop()
            refused = {name: call() for name, call in calls.items()}
            refused["stream with a ticket"] = requests.get(
                stream_url, params={"ticket": ticket}, timeout=10, stream=True
            )
            for name, answer in refused.items():
                assert answer.status_code == 503, (name, answer.status_code, answer.text)
                assert int(answer.headers["Retry-After"]) >= 1, name
                assert answer.headers["Content-Type"].startswith("application/json"), name
                assert answer.json()["error"]["code"] == "unavailable", name
                assert answer.json()["error"]["message"], name
            assert requests.get(live.url + "/readyz", timeout=10).status_code == 503
            # The open stream waits through the outage (pings), or ends cleanly to be resumed.
            with contextlib.suppress(EOFError):
                assert open_stream.next_item(5) == "ping"

            pg.start()
            assert until_served(calls["list"]).status_code == 200
            for name in ("login", "create", "get", "events", "stream-ticket", "stream-tickets"):
                answer = calls[name]()
                assert answer.status_code in (200, 201), (name, answer.text)
            # The listener reconnects with a backoff of at most 5 s.
            assert until_served(lambda: requests.get(live.url + "/readyz", timeout=10)).status_code == 200

            retrying(lambda: producer.append_events(exec_id, [COMPLETE]))
            ids = [int(f.id) for f in open_stream.rest() if f.id]
        if not open_stream.ended or not ids or ids[-1] != 3:
            # It ended during the outage: a client resumes from its cursor.
            cursor = str(ids[-1]) if ids else "1"
            with Stream(stream_url, {**account.headers, "Last-Event-ID": cursor}) as resumed:
                ids += [int(f.id) for f in resumed.rest() if f.id]
        log = live.log_text()[log_before:]
    db.close()
    assert ids == [2, 3]  # the progress appended over HTTP after the restart, then complete
    assert "Traceback" not in log
    lines = _outage_lines(log)
    assert sum("database unavailable" in line for line in lines) == 1, lines
    assert sum("database available again" in line for line in lines) == 1, lines
    assert len(lines) == 2, lines  # the outage began, and it ended: nothing per request
