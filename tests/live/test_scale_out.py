"""Two hosts on one PostgreSQL: each a gunicorn of its own, on its own port (SPEC §9 scale-out).

Nothing is shared between the two but the database: wake-ups, per-user stream
limits and revocation must cross from one to the other through it.
"""

from __future__ import annotations

import contextlib
import typing as t

import pytest
import requests

from streamapp import accounts
from tests.conftest import LiveServer
from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

ENV = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_POLL_MS": "2000", "STREAMAPP_MAX_STREAMS_PER_USER": "2"}


@pytest.fixture(scope="module")
def hosts(database: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[LiveServer, LiveServer]]:
    with (
        live_server(database, tmp_path_factory.mktemp("host-a"), ENV, workers=2) as a,
        live_server(database, tmp_path_factory.mktemp("host-b"), ENV, workers=2) as b,
    ):
        yield a, b


def _stream(host: LiveServer, exec_id: str, headers: dict[str, str]) -> Stream:
    stream = Stream(host.api(f"/executions/workflows/{exec_id}/stream"), headers)
    assert stream.response.status_code == 200, stream.response.text
    assert stream.next_item().retry is not None and stream.next_item() == "connected"
    return stream


def _status(status: str) -> dict[str, t.Any]:
    return {"type": "workflow_status", "data": {"status": status}}


def _notifications(host: LiveServer) -> float:
    """NOTIFY wake-ups the host's listeners received, summed over its workers."""
    text = requests.get(host.url + "/metrics", timeout=10).text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("streamapp_notifications_total")
    )


def test_an_append_on_one_host_wakes_a_stream_on_the_other(hosts, account, workflow):
    a, b = hosts
    woken = _notifications(b)
    with _stream(b, workflow, account.headers) as stream:
        for n, status in enumerate(("RUNNING", "PAUSED", "RUNNING"), 1):
            r = requests.post(
                a.api(f"/executions/workflows/{workflow}/events"),
                json={"events": [_status(status)]},
                headers=account.headers,
                timeout=10,
            )
            assert r.status_code == 201, r.text
            frame = stream.next_frame()
            assert (frame.id, frame.json["data"]["status"]) == (str(n), status)
    # Host A's appends reached host B's listeners as notifications, not only through its polling.
    assert _notifications(b) >= woken + 3


def test_the_per_user_limit_counts_streams_on_every_host(hosts, account, producer):
    a, b = hosts
    exec_ids = [producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"] for _ in range(3)]
    with _stream(a, exec_ids[0], account.headers), _stream(b, exec_ids[1], account.headers):
        for host in hosts:
            r = requests.get(
                host.api(f"/executions/workflows/{exec_ids[2]}/stream"), headers=account.headers, timeout=10
            )
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_revoking_a_token_ends_its_streams_on_every_host(hosts, auth, account, producer, db):
    token = auth.token(account, ["read"])
    exec_ids = [producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"] for _ in range(2)]
    with contextlib.ExitStack() as stack:
        streams = [
            stack.enter_context(_stream(host, exec_id, auth.bearer(token)))
            for host, exec_id in zip(hosts, exec_ids, strict=True)
        ]
        with db.transaction() as cur:
            accounts.revoke_token(cur, t.cast(str, accounts.token_prefix(token)))
        for stream in streams:
            stream.ends_within(10)  # the heartbeat is 1 s; the margin is for a busy machine
    for host, exec_id in zip(hosts, exec_ids, strict=True):
        r = requests.get(host.api(f"/executions/workflows/{exec_id}/stream"), headers=auth.bearer(token), timeout=10)
        assert r.status_code == 401
