"""One stream's mailbox in the worker's hub: bounded in events, bytes and text chunks."""

from __future__ import annotations

import collections
import os
import typing as t
from collections.abc import Sequence

import gevent.event

from . import counters
from .catalog import TERMINAL_TYPES

#: ``(event id or None for a text chunk, type, framed bytes)``
Item = tuple[int | None, str, bytes]


class Rendered:
    """One batch's bytes for streams at one cursor with one filter, made once for all of them.

    ``data`` goes to the socket, ``last`` is the cursor after it, ``ended``
    whether it holds the terminal event; ``types`` counts its frames by type
    and ``writes`` the streams it was written to, so the hub counts what was
    sent once per batch, not once per stream (issue 13).
    """

    __slots__ = ("data", "last", "ended", "types", "writes")

    def __init__(self, data: bytes, last: int, ended: bool, types: dict[str, int]) -> None:
        self.data, self.last, self.ended, self.types = data, last, ended, types
        self.writes = 0


def direct_sent(rendered: dict[t.Any, Rendered]) -> dict[str, int]:
    """Frames by type that one batch's direct writes put on sockets, summed over its streams."""
    sent: dict[str, int] = {}
    for done in rendered.values():
        if done.writes:
            for name, count in done.types.items():
                sent[name] = sent.get(name, 0) + count * done.writes
    return sent


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
        "fd",
        "chunked",
        "types",
        "last",
        "parked",
        "pending",
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
        # The direct-write path (see try_write); fd None keeps the stream on the generator path.
        self.fd: int | None = None
        self.chunked = True
        self.types: frozenset[str] | None = None
        self.last = 0
        self.parked = False
        self.pending = b""
        self.ended = False
        #: ``time.monotonic()`` at the stream's request until its first event frame is written.
        self.connected_at: float | None = None
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

    def try_write(self, batch: Sequence[Item], rendered: dict[t.Any, Rendered]) -> bool:
        """Write new frames straight to a parked, up-to-date stream's socket.

        Waking one greenlet per stream per event and writing through the WSGI
        server costs far more than one non-blocking ``os.write`` of bytes
        framed once (PERFORMANCE.md). Only a stream parked in its wait, with
        nothing queued, qualifies: its generator is not inside a write, so the
        bytes cannot interleave with gunicorn's. What the socket does not take
        now is left in ``pending`` for the stream's own greenlet to send.
        ``rendered`` caches the bytes by cursor and filter across the streams
        of one batch, and counts the streams they went to. Returns False when
        the caller must queue instead.
        """
        if self.fd is None or not self.parked or self.items or self.overflowed or self.pending or self.closing:
            return False
        key = (self.last, self.types, self.chunked)
        cached = rendered.get(key)
        if cached is None:
            cached = rendered[key] = self._render(batch)
        data = cached.data
        if data:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                return False  # a broken socket: the generator's next write ends the stream
            self.pending = data[written:]
            cached.writes += 1
            self.wrote(sum(cached.types.values()))
        self.last, self.ended = cached.last, cached.ended
        if self.pending or self.ended:
            self.wakeup.set()
        return True

    def wrote(self, frames: int) -> None:
        """Count event frames written to this stream, by the hub or its generator; the first
        batch observes the time to first event (SPEC §9)."""
        self.sent += frames
        if self.connected_at is not None:
            counters.first_event(self.connected_at)
            self.connected_at = None

    def _render(self, batch: Sequence[Item]) -> Rendered:
        frames, last, ended = [], self.last, False
        types: dict[str, int] = {}
        for event_id, type_name, frame in batch:
            if event_id is None or event_id <= last:
                continue
            last = event_id
            if self.types is None or type_name in self.types or type_name in TERMINAL_TYPES:
                frames.append(frame)
                types[type_name] = types.get(type_name, 0) + 1
            if type_name in TERMINAL_TYPES:
                ended = True
                break
        body = b"".join(frames)
        if body and self.chunked:
            body = b"%X\r\n%s\r\n" % (len(body), body)
        return Rendered(body, last, ended, types)

    def push_chunk(self, frame: bytes) -> None:
        if self.types is not None and "llm_chunk" not in self.types:
            return  # filtered out: neither queued nor counted as dropped
        if self.overflowed or self.queued_chunks >= CHUNK_LIMIT:
            self.dropped_chunks += 1
            counters.CHUNKS_DROPPED.inc()
            return
        self.items.append((None, "llm_chunk", frame))
        self.queued_chunks += 1
        self.wakeup.set()

    def close(self, reason: str) -> None:
        """Ask the stream to end: ``shutdown``, ``revoked`` or ``client_gone``; the first reason stays."""
        if not self.closing:
            self.reason = reason
        self.closing = True
        self.wakeup.set()

    def take(self) -> tuple[list[Item], bool]:
        """Queued items and whether the stream must re-read the table instead."""
        self.wakeup.clear()
        items, overflowed = list(self.items), self.overflowed
        self.items.clear()
        self.queued_bytes = self.queued_chunks = 0
        self.overflowed = False
        return items, overflowed

    def _drop_queue(self) -> None:
        dropped = self.queued_chunks
        self.dropped_chunks += dropped
        if dropped:
            counters.CHUNKS_DROPPED.inc(dropped)
        self.items.clear()
        self.queued_bytes = self.queued_chunks = 0
