"""The client's raw socket: hang-up watch, unsent bytes, and direct writes of live frames (PERFORMANCE.md).

Everything that touches a stream's socket past the WSGI server lives here,
behind :class:`ClientSocket` (STYLE §2 "Streams": one seam). Waking one
greenlet per stream per event and writing through gunicorn costs far more than
one non-blocking ``os.write`` of bytes framed once per batch, so the hub
writes new frames straight to a parked, up-to-date stream's socket
(:meth:`Subscriber.try_write <streamapp.subscriber.Subscriber.try_write>`).

The generator path (``generator.py``: the stream's WSGI body yields frames and
gunicorn writes them) is the fallback, and the only path when
:func:`client_socket` says so: no raw socket (any WSGI server but gunicorn),
a scheme or protocol whose framing we do not own, or
``STREAMAPP_DIRECT_WRITES=false``. Both paths select frames with
:func:`streamapp.event_filter.select`, so they send the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import typing as t
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

import gevent

from . import counters
from .event_filter import Item
from .event_filter import select

if t.TYPE_CHECKING:
    from .config import Settings


def _queued(fd: int, request: int) -> int:
    """A socket's byte count from ``ioctl``: FIONREAD (received, unread) or TIOCOUTQ (unsent)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0])


class ClientSocket:
    """A stream client's socket under gunicorn, and whether live frames may be written to it directly."""

    __slots__ = ("_sock", "fd", "direct", "chunked", "pending")

    def __init__(self, sock: socket.socket, *, direct: bool, chunked: bool = True) -> None:
        self._sock = sock
        self.fd = sock.fileno()
        #: Whether the hub may write frames to it (see :meth:`write`); else only the generator writes.
        self.direct = direct
        #: HTTP/1.1 bodies are chunked by gunicorn; direct writes must frame their bytes the same way.
        self.chunked = chunked
        #: Bytes of a direct write the socket did not take at once; :meth:`flush` sends them.
        self.pending = b""

    def write(self, rendered: Rendered) -> bool:
        """Write a batch's bytes without blocking; keep what the socket did not take in :attr:`pending`.

        Only for a stream whose generator is not inside a write, so the bytes
        cannot interleave with gunicorn's. Returns False for a broken socket:
        the generator's next write ends the stream.
        """
        if not rendered.data:
            return True
        if not self.write_body(rendered.data, chunked=False):
            return False
        rendered.writes += 1
        return True

    def write_body(self, data: bytes, *, chunked: bool | None = None) -> bool:
        """:meth:`write` for body bytes of the caller's own making, framed as a chunk where the
        response is chunked (``chunked=False``: they are framed already)."""
        if chunked if chunked is not None else self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return False
        self.pending = data[written:]
        return True

    def flush(self) -> str | None:
        """Send :attr:`pending`, cooperatively, within the send timeout; why the stream must end, if it must."""
        data, self.pending = self.pending, b""
        try:
            self._sock.sendall(data)
        except TimeoutError:
            counters.SLOW_CLIENT_DISCONNECTS.inc()  # it stopped reading (issue 4)
            return "slow_client"
        except OSError:
            return "client_gone"
        return None

    def stalled(self) -> bool:
        """Whether the socket still holds bytes the client has not taken: a client that stopped reading."""
        try:
            return _queued(self.fd, termios.TIOCOUTQ) > 0  # SIOCOUTQ on a socket
        except OSError:
            return False

    def shut_reading(self) -> None:
        """Shut reading, so gunicorn closes the connection after this response instead of keeping it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)

    @contextlib.contextmanager
    def watch_hangup(self, hung_up: Callable[[], None]) -> Iterator[None]:
        """Call ``hung_up`` as soon as the client hangs up, not at the next heartbeat.

        A closed stream gives its user's slot back at once (SPEC §5), so the
        server must notice the close. An SSE client sends nothing after its
        request: the socket turning readable with no byte to read is its FIN or
        RST. One libev watcher, no greenlet. A client that vanishes without
        either is noticed when a write (a heartbeat at the latest) fails.
        """
        watcher = gevent.get_hub().loop.io(self.fd, 1)  # 1: readable

        def readable() -> None:
            watcher.stop()  # level-triggered: stop first; a client that sent bytes is left alone
            if _queued(self.fd, termios.FIONREAD) == 0:
                hung_up()

        watcher.start(readable)
        try:
            yield
        finally:
            watcher.stop()
            watcher.close()


def client_socket(environ: dict[str, t.Any], settings: Settings) -> ClientSocket | None:
    """The client's socket, if the WSGI server exposes it; direct writes only where the framing is known.

    Only plain HTTP/1.x on gunicorn qualifies: chunked for HTTP/1.1, raw for
    HTTP/1.0. Anything else keeps the generator path (``direct`` False).
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    # A client that stops reading blocks our writes; a socket timeout ends it
    # instead of letting its frames pile up (issue 4).
    sock.settimeout(settings.send_timeout_s)
    protocol = environ.get("SERVER_PROTOCOL")
    direct = (
        settings.direct_writes and environ.get("wsgi.url_scheme") == "http" and protocol in ("HTTP/1.0", "HTTP/1.1")
    )
    return ClientSocket(sock, direct=direct, chunked=protocol == "HTTP/1.1")


class Rendered:
    """One batch's bytes for the streams at one cursor, with one filter and one framing.

    ``data`` goes to the socket, ``last`` is the cursor after it, ``ended``
    whether it holds the terminal event; ``types`` counts its frames by type
    and ``writes`` the streams it was written to, so what was sent is counted
    once per batch, not once per stream (issue 13).
    """

    __slots__ = ("data", "last", "ended", "types", "count", "writes")

    def __init__(self, items: Sequence[Item], last: int, types: frozenset[str] | None, chunked: bool) -> None:
        selected = select(items, last, types)
        body = selected.data
        if body and chunked:
            body = b"%X\r\n%s\r\n" % (len(body), body)
        self.data, self.last, self.ended = body, selected.last, selected.ended
        self.types, self.count = selected.types, selected.count
        self.writes = 0


class Batch:
    """New events of one execution, offered to each of its streams for a direct write."""

    __slots__ = ("items", "_rendered")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self._rendered: dict[tuple[int, frozenset[str] | None, bool], Rendered] = {}

    def render(self, last: int, types: frozenset[str] | None, chunked: bool) -> Rendered:
        """The bytes for a stream at ``last`` filtering on ``types``: made once, shared by its like."""
        key = (last, types, chunked)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = Rendered(self.items, last, types, chunked)
        return rendered

    def count(self, direct: int) -> None:
        """Count the batch's ``direct`` writes: a few increments and one observation, whatever the streams.

        Streams on the generator path count their own frames when they write them.
        """
        if not direct:
            return
        counters.DIRECT_WRITES.inc(direct)
        sent: dict[str, int] = {}
        for rendered in self._rendered.values():
            for name, count in rendered.types.items():
                if rendered.writes:
                    sent[name] = sent.get(name, 0) + count * rendered.writes
        if sent:
            counters.events_sent(sent)
            # Every direct write of the batch is done: its oldest event's commit → send (SPEC §9).
            counters.commit_to_send(self.items[0][2])
