"""A closed stream gives its per-user slot back at once (SPEC §5 errors, issue 11).

A client at its limit gets 429 with ``Retry-After``; once it closes a stream
and waits that long, it is not refused again — whether it closed cleanly,
reset the connection, or the stream ended on the server's side.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
import requests

from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _url(live, exec_id: str) -> str:
    return live.api(f"/executions/workflows/{exec_id}/stream")


def _raw_stream(live, token: str, exec_id: str) -> socket.socket:
    """A stream opened on a bare socket, read up to its ``: connected`` prelude."""
    host, port = live.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    path = f"/api/v0/executions/workflows/{exec_id}/stream"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    received = b""
    while b": connected" not in received:
        data = sock.recv(4096)
        assert data, received
        received += data
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def _hang_up(sock: socket.socket, how: str) -> None:
    if how == "reset":
        # SO_LINGER 0: close() sends RST at once, as a client that crashes or is killed may.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _refused(live, account, exec_id: str) -> int:
    """The 429 a user at their limit gets; its Retry-After."""
    answer = requests.get(_url(live, exec_id), headers=account.headers, timeout=10)
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "too_many_streams"
    return int(answer.headers["Retry-After"])


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_hangs_up_and_honours_retry_after_is_served(database, tmp_path, account, workflow, how):
    # A long heartbeat: the server must notice the hang-up itself, not at its next ping.
    env = {"STREAMAPP_MAX_STREAMS_PER_USER": "1", "STREAMAPP_HEARTBEAT_S": "30"}
    with live_server(database, tmp_path, env) as live:
        first = _raw_stream(live, account.token, workflow)
        retry_after = _refused(live, account, workflow)
        assert 1 <= retry_after <= 2  # honest: a closed stream's slot comes back at once
        _hang_up(first, how)
        time.sleep(retry_after)  # what a client honouring Retry-After does
        with Stream(_url(live, workflow), account.headers) as again:
            assert again.response.status_code == 200, again.response.text


def test_a_vanished_client_is_noticed_at_the_next_heartbeat(database, tmp_path, account, workflow):
    env = {"STREAMAPP_MAX_STREAMS_PER_USER": "1", "STREAMAPP_HEARTBEAT_S": "1"}
    with live_server(database, tmp_path, env) as live:
        first = _raw_stream(live, account.token, workflow)
        retry_after = _refused(live, account, workflow)
        _hang_up(first, "reset")
        time.sleep(retry_after)
        with Stream(_url(live, workflow), account.headers) as again:
            assert again.response.status_code == 200, again.response.text


def test_a_stream_the_server_ends_gives_its_slot_back_before_the_client_sees_the_end(
    database, tmp_path, account, workflow, producer
):
    env = {"STREAMAPP_MAX_STREAMS_PER_USER": "1", "STREAMAPP_HEARTBEAT_S": "30"}
    with live_server(database, tmp_path, env) as live:
        for n in range(5):
            exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
            with Stream(_url(live, exec_id), account.headers) as stream:
                stream.next_item()
                producer.append_events(exec_id, [COMPLETE])
                assert [f.event for f in stream.rest()] == ["complete"]
            # No wait at all: the count was given back before the response's last byte.
            with Stream(_url(live, workflow), account.headers) as again:
                assert again.response.status_code == 200, (n, again.response.text)
