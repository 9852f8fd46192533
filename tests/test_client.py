"""streamapp.client.follow in process (SPEC §6; issue 9): its arguments, and what it does against a
scripted HTTP server that repeats, stalls, redirects or fails; against a live gunicorn in
tests/live/test_client.py."""

from __future__ import annotations

import contextlib
import http.server
import threading
import typing as t

import pytest

from streamapp import client
from streamapp.client import follow
from tests.conftest import free_port


def _run(fn: t.Callable[[], t.Any], deadline_s: float = 30.0) -> t.Any:
    """``fn()`` in a thread, failing the test if it has not finished by the deadline."""
    box: dict[str, t.Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        pytest.fail(f"no result within {deadline_s} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_unreachable_server_gives_up_after_max_wait():
    url = f"http://127.0.0.1:{free_port()}/api/v0/executions/workflows/x/stream"
    statuses: list[client.Status] = []
    with pytest.raises(client.UnavailableError) as caught:
        _run(lambda: list(follow(url, max_wait=1, last_event_id=7, on_status=statuses.append)))
    assert caught.value.last_id == 7 and "Connection" in caught.value.reason
    assert "reconnecting" in [s.state for s in statuses]


@pytest.mark.parametrize(
    ("kwargs", "url"),
    [
        ({}, "ftp://host/stream"),
        ({}, "/api/v0/executions/workflows/x/stream"),
        ({"events": ["Not-a-type"]}, "http://host/s"),
        ({"events": []}, "http://host/s"),
        ({"last_event_id": -1}, "http://host/s"),
        ({"token": "a\r\nX-Injected: 1"}, "http://host/s"),
        ({"read_timeout": 0}, "http://host/s"),
        # A cursor token resumes a multiplexed stream only, and is URL-safe characters only.
        ({"last_event_id": "AQI.sig"}, "http://host/api/v0/executions/workflows/x/stream"),
        ({"last_event_id": "bad token\r\n"}, "http://host/api/v0/streams?ids=workflows/x"),
    ],
)
def test_bad_arguments_raise_before_any_io(kwargs, url):
    with pytest.raises(ValueError):
        follow(url, **kwargs)


# The server under test never repeats an event, redirects or fails with a 5xx on purpose; a
# scripted HTTP server shows what the client does when a proxy or another deployment does.


class _Scripted(http.server.BaseHTTPRequestHandler):
    script: list[tuple[int, dict[str, str], bytes]]
    seen: list[dict[str, str]]
    stall: threading.Event  # a body ending in STALL is followed by silence until the test ends

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append(dict(self.headers))
        status, headers, body = self.script.pop(0)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body.removesuffix(STALL))
        if body.endswith(STALL):
            self.wfile.flush()
            self.stall.wait(30)

    def log_message(self, *args: t.Any) -> None:
        pass


@contextlib.contextmanager
def _scripted(host: str, script: list[tuple[int, dict[str, str], bytes]]) -> t.Iterator[tuple[str, list]]:
    stall = threading.Event()
    handler = type("Handler", (_Scripted,), {"script": list(script), "seen": [], "stall": stall})
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}", handler.seen
    finally:
        stall.set()
        httpd.shutdown()
        httpd.server_close()


SSE = {"Content-Type": "text/event-stream"}
STALL = b"<stall>"


def test_duplicates_are_dropped_and_5xx_retried_with_last_event_id():
    script = [
        (503, {"Retry-After": "0"}, b'{"error": {"code": "unavailable", "message": "x"}}'),
        (200, SSE, b"retry: 10\n\nid: 1\nevent: a\ndata: {}\n\nevent: llm_chunk\ndata: t\n\n"),
        (502, {}, b"bad gateway"),
        (200, SSE, b"id: 1\nevent: a\ndata: {}\n\nevent: llm_chunk\ndata: t\n\nid: 2\nevent: complete\ndata: {}\n\n"),
    ]
    with _scripted("127.0.0.1", script) as (base, seen):
        events = _run(lambda: list(follow(base + "/stream", max_wait=10)))
    assert [(e.id, e.type) for e in events] == [(1, "a"), (None, "llm_chunk"), (None, "llm_chunk"), (2, "complete")]
    assert [h.get("Last-Event-ID") for h in seen] == [None, None, "1", "1"]


def test_a_silent_stream_is_dropped_after_the_read_timeout_and_resumed():
    script = [
        (200, SSE, b"id: 1\nevent: a\ndata: {}\n\n" + STALL),
        (200, SSE, b"id: 2\nevent: complete\ndata: {}\n\n"),
    ]
    statuses: list[client.Status] = []
    with _scripted("127.0.0.1", script) as (base, seen):
        stream = follow(base + "/stream", read_timeout=0.5, on_status=statuses.append)
        events = _run(lambda: list(stream))
    assert [e.id for e in events] == [1, 2]
    assert [s.reason for s in statuses if s.state == "reconnecting"] == ["no data for 0.5 s"]
    assert seen[1]["Last-Event-ID"] == "1"


def test_a_redirect_to_another_host_does_not_carry_the_token():
    with _scripted("127.0.0.1", [(204, SSE, b"")]) as (other, seen_other):
        other = other.replace("127.0.0.1", "localhost")  # another origin, same machine
        with _scripted("127.0.0.1", [(307, {"Location": "/moved"}, b""), (302, {"Location": other}, b"")]) as (
            base,
            seen,
        ):
            assert _run(lambda: list(follow(base + "/stream", token="secret"))) == []
    assert [h.get("Authorization") for h in seen] == ["Bearer secret", "Bearer secret"]
    assert len(seen_other) == 1 and "Authorization" not in seen_other[0]


def test_a_200_that_is_not_an_event_stream_is_a_protocol_error():
    with _scripted("127.0.0.1", [(200, {"Content-Type": "text/html"}, b"<html>login</html>")]) as (base, _):
        with pytest.raises(client.ProtocolError):
            _run(lambda: list(follow(base + "/stream")))


def test_every_public_name_is_importable_from_streamapp_client():
    # The exceptions live in client_errors.py; callers keep importing them from client (SPEC §6).
    assert [name for name in client.__all__ if not hasattr(client, name)] == []
    assert issubclass(client.NotFoundError, client.StatusError) and issubclass(client.StatusError, client.FollowError)
