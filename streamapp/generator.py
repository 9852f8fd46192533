"""The generator path: one stream's WSGI body — prelude, replay, live frames — and its end (SPEC §5).

The body gets plain values only (a :class:`Plan`: no ``request``, ``g`` or
``current_user``). It flushes its prelude before any database work,
subscribes to the worker's hub, replays from the table and goes live. Live
frames reach the client through this body (gunicorn writes what it yields),
or, for a parked stream with a raw socket, straight from the hub
(``direct_writes``); both select frames with ``event_filter.select``, so the
client gets the same bytes either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
import typing as t
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator
from collections.abc import Sequence

from . import counters
from . import framing
from . import logs
from . import storage
from .errors import DatabaseUnavailable
from .event_filter import Item
from .event_filter import Selected
from .event_filter import select

if t.TYPE_CHECKING:
    from .direct_writes import ClientSocket
    from .state import State
    from .storage import Facts
    from .subscriber import Subscriber

# Stream records keep the logger operators filter on, whichever module writes them.
log = logging.getLogger("streamapp.stream")

REPLAY_PAGE = 5000


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Everything a stream's body needs, as plain values."""

    exec_id: str
    cursor: int
    newest: int | None  # the execution's newest id when the cursor must be checked for a reset
    types: frozenset[str] | None
    poll_ms: int
    heartbeat_s: float
    lifetime_s: float
    retry_ms: int
    user_id: str
    token_prefix: str | None
    facts: Facts  # the execution's kind, owner and text mode, for the stream and its hub
    connected_at: float  # time.monotonic() when the request reached the view
    client: ClientSocket | None = None  # the raw socket, when the WSGI server exposes it
    terminal_id: int | None = None  # an ended execution's terminal id: the replay ends there, pruned or not

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    def ahead(self) -> bool:
        """Whether the cursor is past the execution's newest id: a ``stream_reset`` is due (SPEC §5)."""
        return self.newest is not None and self.cursor > self.newest


@dataclasses.dataclass(slots=True)
class _Ending:
    """How a stream ended, for its one log record (SPEC §9); its body fills it in."""

    reason: str = "client_gone"  # the body never ran: the client left before the first byte
    sent: int = 0
    last: int = 0


class StreamBody:
    """A stream's WSGI iterable: the WSGI server iterates the body's generator itself, and
    :meth:`close` ends the stream once, whether or not the body ever ran.

    Returned with ``direct_passthrough``: no wrapping iterator per frame, and nothing
    of the response kept for the stream's life but this (issue 10: memory per stream).
    """

    __slots__ = ("_body", "_end")

    def __init__(self, body: Generator[bytes, None, None], end: Callable[[], None]) -> None:
        self._body = body
        self._end = end

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            self._end()  # the body gives the slot back; this, if it never ran


def open_stream(state: State, plan: Plan) -> StreamBody:
    """Count the stream open; its body, which ends it when closed.

    The caller holds the stream's slot (``slots``); ending gives it back, once.
    """
    counters.stream_opened(plan.kind)
    ending = _Ending(last=plan.cursor)
    done = False

    def end() -> None:
        nonlocal done
        if not done:
            done = True
            _end(state, plan, ending)

    return StreamBody(_body(state, plan, ending, end), end)


def _end(state: State, plan: Plan, ending: _Ending) -> None:
    """Give the stream's slot back, then log its end: once per stream, whichever way it ended."""
    counters.stream_closed(plan.kind, time.monotonic() - plan.connected_at)
    # With the others ending within slots.GIVE_BACK_DELAY_S, in one statement; at once on shutdown,
    # when the worker may be gone before the batch is written.
    state.hub.slots.give_back(plan.user_id, at_once=ending.reason == "shutdown")
    logs.structured(
        log,
        logging.INFO,
        "stream ended",
        exec_id=plan.exec_id,
        kind=plan.kind,
        user_id=plan.user_id,
        duration_s=round(time.monotonic() - plan.connected_at, 3),
        events_sent=ending.sent,
        last_id=ending.last,
        reason=ending.reason,
    )


def reset_of(cursor: int, newest: int, oldest: int | None) -> tuple[dict[str, t.Any] | None, int]:
    """The ``stream_reset`` data and the cursor to replay from, when the cursor is unusable (SPEC §5.5);
    ``None`` and the cursor itself when it is not."""
    held_from = oldest if oldest is not None else newest + 1
    if cursor > newest:
        reason = "cursor_ahead"
    elif cursor < held_from - 1:  # retention removed events after the cursor, maybe all of them
        reason = "cursor_expired"
    else:
        return None, cursor
    return {"reason": reason, "newest_id": newest, "oldest_id": oldest or 0}, held_from - 1


def reset_frame(cursor: int, newest: int, oldest: int | None) -> tuple[bytes | None, int]:
    """The ``stream_reset`` frame and the cursor to replay from, when the cursor is unusable (SPEC §5.5)."""
    data, cursor = reset_of(cursor, newest, oldest)
    if data is None:
        return None, cursor
    return framing.event_frame(cursor, "stream_reset", json.dumps(data)), cursor


def _written(sub: Subscriber, selected: Selected) -> None:
    """Count a batch the body wrote (its ``yield`` returned): per type, not per event (SPEC §9)."""
    counters.events_sent(selected.types)
    sub.wrote(selected.count)


def _send(sub: Subscriber, selected: Selected, head: bytes = b"") -> Generator[bytes, None, None]:
    """Write ``head`` and a selected batch, count it, and move the stream's cursor past it."""
    if head or selected.frames:
        yield head + selected.data
    if selected.frames:
        _written(sub, selected)
    sub.advance(selected.last)  # for the end record, should the client leave now


def _replay(
    state: State, plan: Plan, sub: Subscriber, last: int, newest: int | None = None
) -> Generator[bytes, None, tuple[int, bool, Sequence[Item]]]:
    """Send the table from ``last`` on, page by page; return the new cursor, whether it ended, and
    the last page read.

    With ``newest`` (a cursor behind the head), the first page also tells
    whether retention removed events after the cursor: the oldest held one
    is then not ``last + 1``, and a ``stream_reset`` goes first (SPEC §5).
    """
    while True:
        # The cap covers the read, not the client's pace: a slow reader holds no slot.
        with state.hub.replays, state.db.autocommit() as cur:
            items, more = storage.frames_after(cur, plan.exec_id, last, REPLAY_PAGE)
        if newest is not None:
            reset, last = reset_frame(last, newest, items[0][0] if items else None)
            if reset:
                yield reset
            newest = None
        selected = select(items, last, plan.types)
        last = selected.last
        yield from _send(sub, selected)
        if selected.ended or not more or sub.closing:
            return last, selected.ended, items


def _from_memory(
    state: State, plan: Plan, sub: Subscriber, prelude: bytes
) -> Generator[bytes, None, tuple[int, bool] | None]:
    """The replay from the hub's recent frames, in one write with the prelude (no database work comes
    first); ``None``, with nothing sent, when they do not hold everything after the cursor.

    Only for an execution that has not ended: retention prunes none of those (SPEC §9), so no
    ``stream_reset`` can be due; a cursor ahead of the table reads it for one.
    """
    if plan.terminal_id is not None or plan.ahead:
        return None
    items = state.hub.recent(sub, plan.cursor)
    if items is None:
        return None
    selected = select(items, plan.cursor, plan.types)
    yield from _send(sub, selected, prelude)
    counters.replayed("memory")
    head = plan.cursor if plan.newest is None else plan.newest
    if head > selected.last:
        state.hub.wake(plan.exec_id, head)  # committed when the view looked: the hub reads them now
    return selected.last, selected.ended


def _body(state: State, plan: Plan, ending: _Ending, end: Callable[[], None]) -> Generator[bytes, None, None]:
    prelude = framing.prelude(plan.retry_ms)
    ending.reason = "error"  # unless one of the ways out below says otherwise
    hub = state.hub
    sub = hub.subscribe(
        plan.exec_id,
        plan.poll_ms,
        user_id=plan.user_id,
        token_prefix=plan.token_prefix,
        text_mode=plan.facts.text_mode,
        facts=plan.facts,
        types=plan.types,
        connected_at=plan.connected_at,
        socket=plan.client,
    )
    try:
        page: Sequence[Item] = ()
        replayed = yield from _from_memory(state, plan, sub, prelude)
        if replayed is None:
            yield prelude
            last, ended, page = yield from _replay_table(state, plan, sub, ending)
            counters.replayed("table")
        else:
            last, ended = replayed
        if ended or (plan.terminal_id is not None and last >= plan.terminal_id):
            # Pruned to the end: the stream_reset's id was the terminal id; a reconnect gets 204 (SPEC §9).
            ending.reason = "terminal"
            return
        hub.caught_up(sub, last, page)
        watch = plan.client.watch_hangup(lambda: sub.close("client_gone")) if plan.client else None
        with watch or contextlib.nullcontext():
            ending.reason = yield from _live(state, plan, sub, last)
    except DatabaseUnavailable:
        # After the first byte a status can no longer say 503: end cleanly instead; the
        # client resumes with Last-Event-ID and gets the 503 while the outage lasts (SPEC §2).
        ending.reason = "unavailable"
        return
    except GeneratorExit:
        ending.reason = gone_reason(plan.client)
        raise
    finally:
        hub.unsubscribe(sub)
        ending.sent, ending.last = sub.sent, max(ending.last, sub.last)
        # Before the response's last byte: the end record is written, the slot on its way back.
        end()


def gone_reason(client: ClientSocket | None) -> str:
    """Why gunicorn closed a stream's body (it does when a write fails): a client that hung up,
    or one that stopped reading until the send timeout, its socket still full (issue 4's slow
    client, counted)."""
    if client is not None and client.stalled():
        counters.SLOW_CLIENT_DISCONNECTS.inc()
        return "slow_client"
    return "client_gone"


def _replay_table(
    state: State, plan: Plan, sub: Subscriber, ending: _Ending
) -> Generator[bytes, None, tuple[int, bool, Sequence[Item]]]:
    """The replay from the table, after a ``stream_reset`` when the cursor is ahead of it (SPEC §5)."""
    cursor, newest = plan.cursor, plan.newest
    if plan.ahead:  # rare, costs one query
        with state.db.autocommit() as cur:
            oldest = storage.oldest_event_id(cur, plan.exec_id)
        reset, cursor = reset_frame(cursor, t.cast(int, newest), oldest)
        yield t.cast(bytes, reset)
        newest = None
        ending.last = cursor  # the client's cursor is the reset's id now
    return (yield from _replay(state, plan, sub, cursor, newest))


def shutdown_end(client: ClientSocket | None, retry_ms: int) -> bytes:
    """The last bytes of a stream ended by shutdown: a jittered ``retry:`` (SPEC §5.4, §9).

    The streams of a worker all end at once; spread over half to one and a half
    retry periods, their reconnects do not all land on the next worker together.
    Reading is shut too, so gunicorn closes the connection after this response
    instead of keeping it for another request to a worker that is going away.
    """
    if client is not None:
        client.shut_reading()
    return framing.retry(random.randint(retry_ms // 2, retry_ms * 3 // 2))


def _live(state: State, plan: Plan, sub: Subscriber, last: int) -> Generator[bytes, None, str]:
    """Live events until the stream ends; why it ended (SPEC §9). ``sub.last`` follows the cursor."""
    started = time.monotonic()
    next_ping = started + plan.heartbeat_s
    end = started + plan.lifetime_s
    while True:
        now = time.monotonic()
        if sub.closing:
            if sub.reason == "shutdown":
                yield shutdown_end(plan.client, plan.retry_ms)
            return sub.reason
        if now >= end:
            return "lifetime"
        if now >= next_ping:
            yield framing.PING
            next_ping = now + plan.heartbeat_s
        last = sub.park(last, min(next_ping, end) - now)  # the hub may have written frames for us meanwhile
        gone = sub.flush()
        if gone:
            return gone
        if sub.ended:
            return "terminal"
        items, overflowed = sub.take()
        dropped = sub.take_dropped()
        if dropped:
            # Comments are ignored by clients; operators reading raw streams see the gap.
            yield framing.comment(f"dropped {dropped} text chunks")
        if overflowed:
            last, ended, _ = yield from _replay(state, plan, sub, last)
            if ended:
                return "terminal"
            continue
        selected = select(items, last, plan.types)
        last = selected.last
        yield from _send(sub, selected)
        oldest = next((frame for frame in selected.frames if frame.startswith(b"id:")), None)
        if oldest is not None:  # text chunks have no commit
            counters.commit_to_send(oldest)
        if selected.ended:
            return "terminal"
