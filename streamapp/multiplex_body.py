"""A multiplexed stream's body: its executions' replays, then their live frames (SPEC §5.6).

On one connection, every durable frame's ``id:`` is a cursor token of them all.

Each listed execution is a :class:`Lane` with a subscriber of its own in the
worker's hub, as a single stream has; the lanes share one wakeup, so the body
waits on one event. Frames are the single stream's frames with the id
rewritten, and text chunks are JSON envelopes (the hub frames them so for a
subscriber without text mode). The hub never writes to this stream's socket:
its frames are not a single stream's, so every frame goes through the body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import typing as t
from collections.abc import Generator
from collections.abc import Sequence

import gevent.event

from . import counters
from . import framing
from . import logs
from . import replay
from . import storage
from .cursor import Positions
from .errors import DatabaseUnavailable
from .event_filter import Item
from .event_filter import Selected
from .event_filter import select
from .generator import REPLAY_PAGE
from .generator import StreamBody
from .generator import gone_reason
from .generator import reset_of
from .generator import shutdown_end
from .subscriber import Subscriber

if t.TYPE_CHECKING:
    from .cursor import ListCursor
    from .direct_writes import Batch
    from .direct_writes import ClientSocket
    from .state import State
    from .storage import Facts

log = logging.getLogger("streamapp.stream")

#: The ``kind`` a multiplexed stream is counted and logged under (SPEC §9).
KIND = "multiplex"


@dataclasses.dataclass(slots=True)
class Lane:
    """One listed execution of a multiplexed stream, and how far the stream has sent it."""

    index: int  # its place in the canonical list, and in the token
    exec_id: str
    facts: Facts
    newest: int  # its newest id when the stream was admitted
    terminal_id: int | None
    sub: Subscriber | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class MultiPlan:
    """Everything a multiplexed stream's body needs, as plain values."""

    entries: tuple[str, ...]  # the canonical list, ``segment/exec_id``
    positions: tuple[int, ...]  # the client's cursor per entry
    lanes: tuple[Lane, ...]  # the entries whose terminal event the client has not had yet
    cursor: ListCursor  # makes the tokens of this list
    types: frozenset[str] | None
    poll_ms: int
    heartbeat_s: float
    lifetime_s: float
    retry_ms: int
    user_id: str
    token_prefix: str | None
    connected_at: float
    client: ClientSocket | None = None


class _LaneSubscriber(Subscriber):
    """A lane's mailbox in the hub. While the stream waits, the hub writes the lane's new frames
    straight to the stream's socket, ids rewritten, as it does a single stream's (``direct_writes``):
    no greenlet switch and no trip through gunicorn per event. Otherwise they queue."""

    __slots__ = ("stream", "lane")

    stream: _Stream
    lane: Lane

    def try_write(self, batch: Batch) -> bool:
        stream, lane = self.stream, self.lane
        sock = stream.plan.client
        if sock is None or not sock.direct or not stream.parked or sock.pending:
            return False
        if self.items or self.overflowed or self.closing or lane.sub is not self:
            return False  # what is queued goes first, through the body
        selected = select(batch.items, stream.positions[lane.index], self.types)
        data = stream.frames(lane, selected)
        if data and not sock.write_body(data):
            return False  # a broken socket: the body's next write ends the stream
        oldest = next((frame for frame in selected.frames if frame.startswith(b"id:")), None)
        if oldest is not None:
            counters.commit_to_send(oldest)
        if stream.done(lane):
            self.wakeup.set()  # the body lets the lane go, and ends once every lane has
        elif sock.pending:
            stream.wakeup.set()  # the body sends the rest
        return True


class _Stream:
    """The running state of one multiplexed stream: positions, open lanes, frames sent."""

    def __init__(self, state: State, plan: MultiPlan) -> None:
        self.state = state
        self.plan = plan
        self.positions = Positions(plan.cursor, plan.positions)
        self.open = list(plan.lanes)
        self.wakeup = gevent.event.Event()
        #: Whether the body waits for news: the hub may then write to its socket (_LaneSubscriber).
        self.parked = False
        #: The lanes whose subscriber has news since the body last looked, by index.
        self.ready: dict[int, Lane] = {}
        self.sent = 0
        self.first_sent = False
        self.reason = "client_gone"  # the body never ran: the client left before the first byte

    def frames(self, lane: Lane, selected: Selected) -> bytes:
        """The selected frames of ``lane``, each durable one's id the token after it; counted as sent."""
        out = []
        for frame in selected.frames:
            if frame.startswith(b"id: "):
                self.positions.move(lane.index, int(frame[4 : frame.index(b"\n")]))
                frame = framing.with_token(frame, self.positions.token())
            out.append(frame)
        self.positions.move(lane.index, max(self.positions[lane.index], selected.last))
        if selected.ended:
            lane.terminal_id = selected.last
        if out:
            counters.events_sent(selected.types)
            self.sent += selected.count
            if not self.first_sent:
                self.first_sent = True
                counters.first_event(self.plan.connected_at)
        return b"".join(out)

    def reset(self, lane: Lane, data: dict[str, t.Any], cursor: int) -> bytes:
        """A ``stream_reset`` frame for ``lane``: its data names the execution (SPEC §5.6)."""
        self.positions.move(lane.index, cursor)
        data = {**data, "exec_id": lane.exec_id, "kind": lane.facts.kind}
        frame = framing.event_frame(None, "stream_reset", json.dumps(data))
        return framing.with_token(frame, self.positions.token())

    def subscribe(self) -> None:
        plan = self.plan
        for lane in self.open:
            sub = t.cast(
                _LaneSubscriber,
                self.state.hub.subscribe(
                    lane.exec_id,
                    plan.poll_ms,
                    subscriber=_LaneSubscriber,
                    user_id=plan.user_id,
                    token_prefix=plan.token_prefix,
                    text_mode=False,  # chunks as JSON envelopes, whatever the execution's mode
                    facts=lane.facts,
                    types=plan.types,
                ),
            )
            sub.stream, sub.lane, sub.wakeup = self, lane, t.cast(gevent.event.Event, _LaneWakeup(self, lane))
            lane.sub = sub

    def unsubscribe(self, lane: Lane) -> None:
        if lane.sub is not None:
            self.state.hub.unsubscribe(lane.sub)
            lane.sub = None

    def close_all(self, reason: str) -> None:
        for lane in self.open:
            if lane.sub is not None:
                lane.sub.close(reason)

    def closing(self) -> Subscriber | None:
        return next((lane.sub for lane in self.open if lane.sub is not None and lane.sub.closing), None)

    def finish(self, lane: Lane) -> None:
        """``lane``'s terminal event is sent: the stream follows it no more."""
        self.unsubscribe(lane)
        self.open.remove(lane)

    def replay(self) -> Generator[bytes, None, None]:
        """Every open lane from its position on, then each one's cursor handed to the hub.

        From the hub's memory where it holds a lane's frames; the first table page of all the
        others in one round trip (a dashboard of a hundred executions is not a hundred reads),
        then page by page for those with more.
        """
        from_table = []
        for lane in list(self.open):
            served = yield from self.from_memory(lane)
            if served:
                self.caught_up(lane, ())
            else:
                from_table.append(lane)
        checked = {lane.index: self.positions[lane.index] != lane.newest for lane in from_table}
        for lane in from_table:
            if self.positions[lane.index] > lane.newest:  # rare: the reset asks for the oldest id held
                checked[lane.index] = False
                with self.state.db.autocommit() as cur:
                    oldest = storage.oldest_event_id(cur, lane.exec_id)
                data, cursor = reset_of(self.positions[lane.index], lane.newest, oldest)
                yield self.reset(lane, t.cast(dict[str, t.Any], data), cursor)
        if not from_table:
            return
        wanted = [(lane.exec_id, self.positions[lane.index]) for lane in from_table]
        with self.state.hub.replays, self.state.db.autocommit() as cur:
            pages = replay.first_pages(cur, wanted, REPLAY_PAGE)
        for lane, first in zip(from_table, pages, strict=True):
            counters.replayed("table")
            page = yield from self.read_table(lane, check_newest=checked[lane.index], first=first)
            self.caught_up(lane, page)

    def from_memory(self, lane: Lane) -> Generator[bytes, None, bool]:
        """Send ``lane`` from the hub's recent frames, when they hold everything after its position
        (an execution that has not ended, the position not ahead); whether they did."""
        position = self.positions[lane.index]
        if lane.terminal_id is not None or position > lane.newest:
            return False
        items = self.state.hub.recent(t.cast("Subscriber", lane.sub), position)
        if items is None:
            return False
        data = self.frames(lane, select(items, position, self.plan.types))
        if data:
            yield data
        counters.replayed("memory")
        if lane.newest > self.positions[lane.index]:
            self.state.hub.wake(lane.exec_id, lane.newest)  # committed when the view looked
        return True

    def caught_up(self, lane: Lane, page: Sequence[Item]) -> None:
        """``lane`` is replayed: it ends here, or the hub takes it on from its position."""
        if self.done(lane):
            self.finish(lane)
        elif lane.sub is not None:
            self.state.hub.caught_up(lane.sub, self.positions[lane.index], page)

    def read_table(
        self, lane: Lane, *, check_newest: bool = False, first: tuple[Sequence[Item], bool] | None = None
    ) -> Generator[bytes, None, Sequence[Item]]:
        """Send ``lane``'s table from its position on, page by page (``first`` read already); the
        last page read.

        With ``check_newest``, the first page also tells whether retention removed
        events after the position: a ``stream_reset`` naming the execution goes first.
        """
        while True:
            last = self.positions[lane.index]
            items: Sequence[Item]
            if first is not None:
                (items, more), first = first, None
            else:
                with self.state.hub.replays, self.state.db.autocommit() as cur:
                    items, more = storage.frames_after(cur, lane.exec_id, last, REPLAY_PAGE)
            if check_newest:
                check_newest = False
                data, last = reset_of(last, lane.newest, items[0][0] if items else None)
                if data is not None:
                    yield self.reset(lane, data, last)
            selected = select(items, last, self.plan.types)
            data_bytes = self.frames(lane, selected)
            if data_bytes:
                yield data_bytes
            if selected.ended or not more or self.closing():
                return items

    def done(self, lane: Lane) -> bool:
        return lane.terminal_id is not None and self.positions[lane.index] >= lane.terminal_id


class _LaneWakeup:
    """A lane subscriber's wakeup: the hub's ``set`` marks the lane ready and wakes the stream, so
    the body drains the lanes with news, not every lane it lists, at each event."""

    __slots__ = ("_stream", "_lane")

    def __init__(self, stream: _Stream, lane: Lane) -> None:
        self._stream, self._lane = stream, lane

    def set(self) -> None:
        self._stream.ready[self._lane.index] = self._lane
        self._stream.wakeup.set()

    def clear(self) -> None:
        """Never called: only a single stream's generator takes or parks (``Subscriber``)."""


def open_multiplex(state: State, plan: MultiPlan) -> StreamBody:
    """Count the stream open; its body, which ends it when closed. The caller holds its one slot."""
    counters.stream_opened(KIND)
    stream = _Stream(state, plan)
    done = False

    def end() -> None:
        nonlocal done
        if not done:
            done = True
            _end(state, stream)

    return StreamBody(_body(stream, end), end)


def _end(state: State, stream: _Stream) -> None:
    """Give the stream's slot back, then log its end: once, whichever way it ended (SPEC §9)."""
    plan, reason = stream.plan, stream.reason
    counters.stream_closed(KIND, time.monotonic() - plan.connected_at)
    state.hub.slots.give_back(plan.user_id, at_once=reason == "shutdown")
    logs.structured(
        log,
        logging.INFO,
        "stream ended",
        # Every listed execution, and the last id sent of each in the same order: an operator
        # finds the stream by any of its executions, as a single stream's by its exec_id.
        exec_id=",".join(entry.partition("/")[2] for entry in plan.entries),
        kind=KIND,
        executions=len(plan.entries),
        user_id=plan.user_id,
        duration_s=round(time.monotonic() - plan.connected_at, 3),
        events_sent=stream.sent,
        last_id=",".join(map(str, stream.positions)),
        reason=reason,
    )


def _body(stream: _Stream, end: t.Callable[[], None]) -> Generator[bytes, None, None]:
    plan = stream.plan
    stream.reason = "error"  # unless one of the ways out below says otherwise
    try:
        yield framing.prelude(plan.retry_ms)
        stream.subscribe()
        yield from stream.replay()
        watch = plan.client.watch_hangup(lambda: stream.close_all("client_gone")) if plan.client else None
        with watch or contextlib.nullcontext():
            stream.reason = yield from _live(stream)
    except DatabaseUnavailable:
        stream.reason = "unavailable"  # the client resumes with its token and gets the 503 (SPEC §2)
    except GeneratorExit:
        stream.reason = gone_reason(plan.client)
        raise
    finally:
        for lane in stream.open:
            stream.unsubscribe(lane)
        end()


def _live(stream: _Stream) -> Generator[bytes, None, str]:
    """Every open lane's live events until the stream ends; why it ended (SPEC §9)."""
    plan = stream.plan
    started = time.monotonic()
    next_ping = started + plan.heartbeat_s
    end = started + plan.lifetime_s
    # Every lane once: one closed before its wakeup was the stream's (a shutdown under way).
    closing = stream.closing()
    while stream.open:
        if closing is not None:
            if closing.reason == "shutdown":
                yield shutdown_end(plan.client, plan.retry_ms)
            return closing.reason
        now = time.monotonic()
        if now >= end:
            return "lifetime"
        if now >= next_ping:
            yield framing.PING
            next_ping = now + plan.heartbeat_s
        stream.parked = True  # the hub may write to the socket while the body waits here
        try:
            stream.wakeup.wait(timeout=min(next_ping, end) - now)
        finally:
            stream.parked = False
        stream.wakeup.clear()  # before the lanes are drained: nothing pushed meanwhile is missed
        if plan.client is not None and plan.client.pending:
            gone = plan.client.flush()  # what the socket did not take of a direct write, first
            if gone:
                return gone
        ready, stream.ready = stream.ready, {}
        for lane in ready.values():
            if lane.sub is None:
                continue  # finished meanwhile
            if lane.sub.closing:
                closing = lane.sub
                break
            yield from _lane_news(stream, lane)
    return "terminal"


def _lane_news(stream: _Stream, lane: Lane) -> Generator[bytes, None, None]:
    """What ``lane``'s subscriber holds: its frames, or a re-read of its table after an overflow."""
    sub = t.cast("Subscriber", lane.sub)
    items, overflowed = sub.drain()
    dropped = sub.take_dropped()
    if dropped:
        yield framing.comment(f"dropped {dropped} text chunks of {lane.exec_id}")
    if overflowed:
        yield from stream.read_table(lane)
    else:
        selected = select(items, stream.positions[lane.index], stream.plan.types)
        data = stream.frames(lane, selected)
        if data:
            yield data
        oldest = next((frame for frame in selected.frames if frame.startswith(b"id:")), None)
        if oldest is not None:  # text chunks have no commit
            counters.commit_to_send(oldest)
    if stream.done(lane):
        stream.finish(lane)
