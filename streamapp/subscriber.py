"""One stream's mailbox in the worker's hub: bounded in events, bytes and text chunks."""

from __future__ import annotations

import collections
import typing as t
from collections.abc import Sequence

import gevent.event

from . import counters
from .event_filter import Item
from .event_filter import wanted

if t.TYPE_CHECKING:
    from .direct_writes import Batch
    from .direct_writes import ClientSocket

#: Frames a stream may have queued before it must re-read from the table instead.
QUEUE_BYTES = 1024 * 1024
#: Undelivered text chunks a stream may hold; more are dropped and counted.
CHUNK_LIMIT = 256


class Subscriber:
    """Durable events are never dropped: on overflow the stream re-reads the table.
    Text chunks are best-effort: past :data:`CHUNK_LIMIT` they are dropped and counted."""

    __slots__ = (
        "exec_id",
        "items",
        "queued_bytes",
        "queued_chunks",
        "dropped_chunks",
        "wakeup",
        "overflowed",
        "closing",
        "limit",
        "poll_ms",
        "user_id",
        "token_prefix",
        "text_mode",
        "socket",
        "types",
        "last",
        "parked",
        "ended",
        "connected_at",
        "reason",
        "sent",
    )

    def __init__(
        self,
        exec_id: str,
        limit: int,
        poll_ms: int,
        *,
        user_id: str | None = None,
        token_prefix: str | None = None,
        text_mode: bool = False,
        types: frozenset[str] | None = None,
        connected_at: float | None = None,
        socket: ClientSocket | None = None,
    ) -> None:
        self.exec_id = exec_id
        self.items: collections.deque[Item] = collections.deque()
        self.queued_bytes = 0
        self.queued_chunks = 0
        self.dropped_chunks = 0
        self.wakeup = gevent.event.Event()
        self.overflowed = False
        self.closing = False
        self.limit = limit
        self.poll_ms = poll_ms
        self.user_id = user_id
        self.token_prefix = token_prefix
        self.text_mode = text_mode
        #: The socket the hub may write to directly (see try_write); None keeps the generator path.
        self.socket = socket if socket is not None and socket.direct else None
        #: The ``events=`` filter (SPEC §5).
        self.types = types
        #: The cursor: the last id sent (or skipped by the filter) to this stream.
        self.last = 0
        self.parked = False
        self.ended = False
        #: ``time.monotonic()`` at the stream's request until its first event frame is written.
        self.connected_at = connected_at
        #: Why the stream was asked to end (see close); its end record says so (SPEC §9).
        self.reason = ""
        #: Event frames written for this stream, by the hub and by its generator (SPEC §9).
        self.sent = 0

    def push(self, batch: Sequence[Item], size: int) -> None:
        if not self.overflowed:
            if len(self.items) + len(batch) > self.limit or self.queued_bytes + size > QUEUE_BYTES:
                # Never drop a durable event: forget the queue, re-read from the cursor.
                self.overflowed = True
                self._drop_queue()
                counters.OVERFLOWS.inc()
            else:
                self.items.extend(batch)
                self.queued_bytes += size
        self.wakeup.set()

    def try_write(self, batch: Batch) -> bool:
        """Write new frames straight to a parked, up-to-date stream's socket (``direct_writes``).

        Only a stream parked in its wait, with nothing queued, qualifies: its
        generator is not inside a write, so the bytes cannot interleave with
        gunicorn's. What the socket does not take now stays pending for the
        stream's own greenlet (:meth:`flush`). Returns False when the caller
        must queue instead.
        """
        sock = self.socket
        if sock is None or not self.parked or self.items or self.overflowed or sock.pending or self.closing:
            return False
        rendered = batch.render(self.last, self.types, sock.chunked)
        if not sock.write(rendered):
            return False
        if rendered.data:
            self.wrote(rendered.count)
        self.last, self.ended = rendered.last, rendered.ended
        if sock.pending:
            self.wakeup.set()
        # Ended: the caller wakes it later (fanout.Endings), its terminal event already sent.
        return True

    def wrote(self, frames: int) -> None:
        """Count event frames written to this stream, by the hub or its generator; the first
        batch observes the time to first event (SPEC §9)."""
        self.sent += frames
        if self.connected_at is not None:
            counters.first_event(self.connected_at)
            self.connected_at = None

    def advance(self, last: int) -> None:
        """The stream's generator sent (or skipped) everything up to ``last``."""
        self.last = max(self.last, last)

    def park(self, last: int, timeout: float) -> int:
        """Wait for news, at cursor ``last``, for at most ``timeout`` seconds; the cursor after.

        While parked, the hub may write frames straight to the socket and move the cursor.
        """
        self.last, self.parked = last, True
        try:
            self.wakeup.wait(timeout=timeout)
        finally:
            self.parked = False
        return self.last

    def flush(self) -> str | None:
        """Finish a direct write the socket did not take at once; why the stream must end, if it must."""
        if self.socket is None or not self.socket.pending:
            return None
        return self.socket.flush()

    def push_chunk(self, frame: bytes) -> None:
        if not wanted(self.types, "llm_chunk"):
            return  # filtered out: neither queued nor counted as dropped
        if self.overflowed or self.queued_chunks >= CHUNK_LIMIT:
            self.dropped_chunks += 1
            counters.CHUNKS_DROPPED.inc()
            return
        self.items.append((None, "llm_chunk", frame))
        self.queued_chunks += 1
        self.wakeup.set()

    def close(self, reason: str) -> None:
        """Ask the stream to end: ``shutdown``, ``revoked`` or ``client_gone``; the first reason stays.

        A stream whose terminal event the hub wrote is ending already, when the worker is idle
        (``fanout.Endings``): a client that hangs up once it has that event does not hurry it.
        """
        if self.ended:
            return
        if not self.closing:
            self.reason = reason
        self.closing = True
        self.wakeup.set()

    def take(self) -> tuple[list[Item], bool]:
        """Queued items and whether the stream must re-read the table instead."""
        self.wakeup.clear()
        return self.drain()

    def drain(self) -> tuple[list[Item], bool]:
        """:meth:`take`, leaving the wakeup set: a multiplexed stream shares one among its
        executions' subscribers, and clears it once before it drains them all (SPEC §5.6)."""
        items, overflowed = list(self.items), self.overflowed
        self.items.clear()
        self.queued_bytes = self.queued_chunks = 0
        self.overflowed = False
        return items, overflowed

    def take_dropped(self) -> int:
        """Text chunks dropped since the last call, for the stream to say so."""
        dropped, self.dropped_chunks = self.dropped_chunks, 0
        return dropped

    def _drop_queue(self) -> None:
        dropped = self.queued_chunks
        self.dropped_chunks += dropped
        if dropped:
            counters.CHUNKS_DROPPED.inc(dropped)
        self.items.clear()
        self.queued_bytes = self.queued_chunks = 0
