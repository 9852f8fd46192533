"""The direct-write seam on real loopback sockets: which streams take it, and what it writes (PERFORMANCE.md).

That a whole stream reads the same through it as through the generator path is
tests/live/test_direct_writes.py; here one ``ClientSocket`` is driven by hand.
"""

from __future__ import annotations

import contextlib
import typing as t

import gevent
import gevent.event
import pytest
from gevent import socket

from streamapp import framing
from streamapp.config import Settings
from streamapp.direct_writes import Batch
from streamapp.direct_writes import ClientSocket
from streamapp.direct_writes import client_socket

SETTINGS = Settings(send_timeout_s=0.2)


@pytest.fixture
def pair() -> t.Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on loopback: (the server's end, as gunicorn hands it over, the client's end)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with contextlib.closing(server), contextlib.closing(client):
        yield server, client


def _environ(sock: t.Any, scheme: str = "http", protocol: str = "HTTP/1.1") -> dict[str, t.Any]:
    return {"gunicorn.socket": sock, "wsgi.url_scheme": scheme, "SERVER_PROTOCOL": protocol}


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the connection closed early"
        data += chunk
    return data


ITEMS = [
    (1, "warning", framing.event_frame(1, "warning", "{}")),
    (2, "complete", framing.event_frame(2, "complete", "{}")),
]


@pytest.mark.parametrize(
    "scheme, protocol, setting, direct, chunked",
    [
        ("http", "HTTP/1.1", True, True, True),
        ("http", "HTTP/1.0", True, True, False),
        ("http", "HTTP/1.1", False, False, True),  # STREAMAPP_DIRECT_WRITES=false: the generator path only
        ("https", "HTTP/1.1", True, False, True),  # framing we do not own
        ("http", "HTTP/2", True, False, False),
    ],
)
def test_which_streams_may_be_written_directly(pair, scheme, protocol, setting, direct, chunked):
    settings = Settings(direct_writes=setting, send_timeout_s=2.5)
    found = client_socket(_environ(pair[0], scheme, protocol), settings)
    assert found is not None and (found.direct, found.chunked) == (direct, chunked)
    assert pair[0].gettimeout() == 2.5  # a client that stops reading is ended, on either path (issue 4)


def test_without_a_raw_socket_only_the_generator_path_exists():
    assert client_socket({"wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}, SETTINGS) is None


@pytest.mark.parametrize("protocol, expected", [("HTTP/1.1", b"%X\r\n%s\r\n"), ("HTTP/1.0", b"%.0s%s")])
def test_a_batch_is_written_in_the_response_framing(pair, protocol, expected):
    server, client = pair
    sock = t.cast(ClientSocket, client_socket(_environ(server, protocol=protocol), SETTINGS))
    body = ITEMS[0][2] + ITEMS[1][2]
    rendered = Batch(ITEMS).render(0, None, sock.chunked)
    assert sock.write(rendered) and sock.pending == b""
    wire = expected % (len(body), body) if protocol == "HTTP/1.1" else body
    assert _read(client, len(wire)) == wire
    assert (rendered.last, rendered.ended, rendered.writes) == (2, True, 1)


def test_streams_alike_share_one_rendering():
    batch = Batch(ITEMS)
    assert batch.render(0, None, True) is batch.render(0, None, True)
    assert batch.render(0, None, True) is not batch.render(1, None, True)
    assert batch.render(1, None, True).data.count(b"id: ") == 1


def test_what_the_socket_does_not_take_is_sent_by_flush(pair):
    server, client = pair
    sock = ClientSocket(server, direct=True, chunked=False)
    big = framing.event_frame(1, "warning", "x" * (8 << 20))  # more than any socket buffer takes at once
    assert sock.write(Batch([(1, "warning", big)]).render(0, None, False))
    assert sock.pending and sock.stalled()
    reader = gevent.spawn(_read, client, len(big))
    assert sock.flush() is None
    assert reader.get(timeout=30) == big
    assert sock.pending == b"" and not sock.stalled()


def test_a_client_that_stops_reading_is_a_slow_client(pair):
    server, _ = pair  # the client's end never reads
    sock = t.cast(ClientSocket, client_socket(_environ(server), SETTINGS))
    big = framing.event_frame(1, "warning", "x" * (8 << 20))
    assert sock.write(Batch([(1, "warning", big)]).render(0, None, True))
    assert sock.flush() == "slow_client"


def test_a_client_that_hung_up_is_gone(pair):
    server, client = pair
    sock = ClientSocket(server, direct=True, chunked=False)
    hung_up = gevent.event.Event()
    with sock.watch_hangup(hung_up.set):
        client.close()
        assert hung_up.wait(timeout=10)
    sock.pending = b"x" * (1 << 20)
    assert sock.flush() == "client_gone"
