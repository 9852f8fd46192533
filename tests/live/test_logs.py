"""No request writes attacker-controlled bytes into gunicorn's logs unescaped (SPEC §2 "Robustness", issue 11).

Raw requests over a socket, so nothing on our side normalizes the path or the
headers before the server sees them; the log is the real file gunicorn writes.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import live_server

pytestmark = pytest.mark.live

FORGING_PATH = b"/api/v0/%0d%0aFORGED%00line%1b%5b2J?ticket=secret-in-query%0d%0aFORGED"
# gunicorn refuses C0 controls in header values; tab and the C1 range (as Latin-1) get through.
FORGING_HEADER = b"a\tb\x85FORGED\x9b[31mred"


def _send(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _request(path: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"GET " + path + b" HTTP/1.1", b"Host: x", b"Connection: close", *headers, b"", b""])


def _log_with(server, needle: str, deadline_s: float = 10.0) -> str:
    """The log once ``needle`` is in it; the access line is written just after the answer."""
    end = time.monotonic() + deadline_s
    while True:
        text = server.log_text()
        if needle in text or time.monotonic() > end:
            return text
        time.sleep(0.05)


def _forged(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("FORGED") or "\x1b" in line or "\x00" in line]


def test_a_path_cannot_forge_an_access_log_line(database, tmp_path):
    with live_server(database, tmp_path) as server:
        answer = _send(server.url, _request(FORGING_PATH, b"X-Test: " + FORGING_HEADER))
        assert answer.startswith(b"HTTP/1.1 404")
        text = _log_with(server, "FORGED")
    assert _forged(text) == []
    line = next(line for line in text.splitlines() if "FORGED" in line)
    assert '"GET /api/v0/\\r\\nFORGED\\x00line\\x1b[2J HTTP/1.1" 404' in line
    assert "secret-in-query" not in text  # the format logs the path, never the query string


def test_headers_cannot_forge_an_access_log_line(database, tmp_path):
    # The format of gunicorn.conf.py, plus the request headers a deployment might add to it.
    fmt = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms %({x-test}i)s "%(a)s"'
    env = {"GUNICORN_CMD_ARGS": f"--access-logformat '{fmt}'"}
    with live_server(database, tmp_path, env) as server:
        _send(server.url, _request(b"/api/v0/x", b"X-Test: " + FORGING_HEADER, b"User-Agent: ua\x85FORGED"))
        text = _log_with(server, "FORGED")
    assert _forged(text) == []
    line = next(line for line in text.splitlines() if "/api/v0/x" in line)
    assert line.endswith(' a\\tb\\x85FORGED\\x9b[31mred "ua\\x85FORGED"')
