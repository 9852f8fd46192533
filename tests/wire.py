"""A stream read over a bare HTTP/1.1 connection, its bytes exactly as the server sent them, and the
events the wire tests append."""

from __future__ import annotations

import socket
import time
import typing as t


class Wire:
    """One stream over a bare HTTP/1.1 connection, its bytes exactly as the server sent them."""

    def __init__(self, live, token: str, exec_id: str, query: str) -> None:
        host, port = live.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        path = f"/api/v0/executions/workflows/{exec_id}/stream{query}"
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode())
        self.raw = b""

    def read_until(self, done: t.Callable[[bytes], bool], deadline_s: float = 20.0) -> None:
        end = time.monotonic() + deadline_s
        while not done(self.raw):
            assert time.monotonic() < end, f"not reached before the deadline: {self.raw[-300:]!r}"
            data = self.sock.recv(65536)
            if not data:
                return
            self.raw += data

    def body(self) -> bytes:
        """The response body, de-chunked; the response must be a chunked 200."""
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return body
            body, rest = body + rest[:size], rest[size + 2 :]


def append(producer, exec_id: str, *types: str) -> None:
    """Append one catalog event of each of ``types`` to ``exec_id``, in one batch."""
    data = {
        "workflow_start": {"workflow_id": "w"},
        "warning": {"code": "slow", "message": "slow"},
        "complete": {"status": "SUCCESS"},
    }
    producer.append_events(exec_id, [{"type": name, "data": data.get(name, {"n": 1})} for name in types])
