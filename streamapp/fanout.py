"""Fan-out: one read of new rows per execution, shared by every stream on it in this worker (SPEC §5, §8).

::

    wake(exec_id, last_id) ──► Topic(exec_id): ONE read of new rows ──► each Subscriber:
    (NOTIFY or safety check)                                               direct write, else its queue

A stream subscribes first, then replays from the table and reports where its
replay ended (:meth:`Topics.caught_up`), so nothing falls between replay and
live; it de-duplicates by id. Each execution keeps its newest frames, up to a
byte budget, as read from the table: a stream whose cursor they cover replays
from them, without a read (:meth:`Topics.recent`). Text chunks are framed once
per mode and queued to every stream of their execution. The hub owns the one
:class:`Topics` of a worker; only the hub holds process-wide mutable state
(STYLE §4).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import typing as t
from collections.abc import Sequence

import gevent
import gevent.hub
import psycopg2

from . import chunks
from . import counters
from . import framing
from . import storage
from .catalog import TERMINAL_TYPES
from .direct_writes import Batch
from .errors import DatabaseUnavailable
from .event_filter import Item
from .storage import Facts
from .subscriber import Subscriber

if t.TYPE_CHECKING:
    from .db import Database

log = logging.getLogger(__name__)

FETCH_PAGE = 1000


class _Topic:
    __slots__ = (
        "exec_id",
        "subscribers",
        "cursor",
        "known",
        "fetching",
        "reading",
        "recent",
        "recent_bytes",
        "facts",
        "ended",
    )

    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None  # highest id fanned out, None until a replay reports
        self.known = 0  # highest id known to exist
        self.fetching = False  # a greenlet is on its way to read new rows
        self.reading = False  # … and its read is in flight: what it returns starts at the cursor it had
        #: The newest frames, gap-free and ending at ``cursor``: rows of the table, never anything else.
        self.recent: collections.deque[Item] = collections.deque()
        self.recent_bytes = 0
        self.facts: Facts | None = None  # from the admission of its first stream
        self.ended = False  # its terminal event was fanned out

    def remember(self, items: Sequence[Item], size: int, limit: int) -> None:
        """Keep ``items`` (``size`` bytes), the frames right after :attr:`recent`, and drop the oldest
        beyond ``limit`` bytes."""
        if self.recent and self.recent[-1][0] != t.cast(int, items[0][0]) - 1:
            self._forget()  # not the next ones: a gap would be served as if nothing were missing
        self.recent.extend(items)
        self.recent_bytes += size
        self._trim(limit)

    def remember_before(self, items: Sequence[Item], limit: int) -> None:
        """Keep ``items``, a stream's last replay page, where they reach back before :attr:`recent`."""
        first = t.cast(int, self.recent[0][0]) if self.recent else t.cast(int, self.cursor) + 1
        last = t.cast(int, items[-1][0])
        if last < first - 1 or last > t.cast(int, self.cursor):
            return  # they would leave a gap before the recent frames, or run past the cursor
        for item in reversed(items):  # the newest of them first, as many as the budget takes
            if t.cast(int, item[0]) >= first:
                continue
            if self.recent_bytes + len(item[2]) > limit:
                return
            self.recent.appendleft(item)
            self.recent_bytes += len(item[2])

    def after(self, cursor: int) -> list[Item] | None:
        """The frames after ``cursor`` up to the topic's cursor, when the recent frames hold all of them."""
        if self.cursor is None or cursor > self.cursor:
            return None
        if cursor == self.cursor:
            return []
        if not self.recent or t.cast(int, self.recent[0][0]) > cursor + 1:
            return None
        skip = cursor + 1 - t.cast(int, self.recent[0][0])
        return list(itertools.islice(self.recent, skip, None))

    def _forget(self) -> None:
        self.recent.clear()
        self.recent_bytes = 0

    def _trim(self, limit: int) -> None:
        while self.recent and self.recent_bytes > limit:
            self.recent_bytes -= len(self.recent.popleft()[2])


class Topics:
    """The executions streamed by one worker, each with its streams and its read cursor."""

    def __init__(self, db: Database, queue_limit: int, recent_budget: int = 0) -> None:
        self.db = db
        self.queue_limit = queue_limit
        #: The byte budget of each execution's recent frames; 0 keeps none, and every replay reads.
        self.recent_budget = recent_budget
        self._topics: dict[str, _Topic] = {}
        self._reassembler = chunks.Reassembler()
        self.endings = Endings()
        self._loop: gevent.hub.Hub | None = None  # the gevent hub the streams run on, once one subscribed

    def __bool__(self) -> bool:
        return bool(self._topics)

    def exec_ids(self) -> list[str]:
        return list(self._topics)

    def subscribers(self) -> list[Subscriber]:
        return [sub for topic in self._topics.values() for sub in topic.subscribers]

    def subscribe(
        self,
        exec_id: str,
        poll_ms: int,
        facts: Facts | None = None,
        subscriber: type[Subscriber] = Subscriber,
        **stream: t.Any,
    ) -> Subscriber:
        """Register a stream of ``exec_id``; ``stream`` holds the ``subscriber`` class's keyword arguments
        (a multiplexed stream's lanes bring a class of their own)."""
        topic = self._topics.get(exec_id)
        if topic is None:
            topic = self._topics[exec_id] = _Topic(exec_id)
            topic.facts = facts
        self._loop = gevent.get_hub()
        sub = subscriber(exec_id, self.queue_limit, poll_ms, **stream)
        topic.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        topic = self._topics.get(sub.exec_id)
        if topic is None:
            return
        topic.subscribers.discard(sub)
        if not topic.subscribers:
            del self._topics[sub.exec_id]

    def caught_up(self, sub: Subscriber, last_id: int, page: Sequence[Item] = ()) -> None:
        """A stream's replay read the table up to ``last_id``; ``page``, its last page read, may
        extend the execution's recent frames back."""
        topic = self._topics.get(sub.exec_id)
        if topic is None:
            return
        if topic.cursor is None:
            topic.cursor = last_id
        if page and self.recent_budget:
            topic.remember_before(page, self._budget(topic))
        self._maybe_fetch(topic)

    def followed(self, exec_id: str) -> tuple[Facts, int] | None:
        """What the hub knows of ``exec_id`` and how far it has read it, while it streams it and
        has not fanned out its end; ``None`` otherwise."""
        topic = self._topics.get(exec_id)
        if topic is None or topic.facts is None or topic.cursor is None or topic.ended:
            return None
        return topic.facts, topic.cursor

    def _budget(self, topic: _Topic) -> int:
        """The bytes ``topic`` may keep: a quarter of the budget per stream that follows it, up to
        the budget, so that a stream alone on its execution adds at most a quarter to its memory."""
        return min(self.recent_budget, self.recent_budget * len(topic.subscribers) // 4)

    def recent(self, sub: Subscriber, cursor: int) -> list[Item] | None:
        """The frames of ``sub``'s execution after ``cursor``, when its recent frames hold all of them
        up to the hub's cursor; ``None`` when the stream must read the table. Call it once subscribed:
        whatever comes after those frames reaches the stream as live events."""
        topic = self._topics.get(sub.exec_id)
        return None if topic is None or not self.recent_budget else topic.after(cursor)

    def wake(self, exec_id: str, last_id: int) -> None:
        """Record that ``exec_id`` has events up to ``last_id``; read them if no stream has."""
        topic = self._topics.get(exec_id)
        if topic is None:
            return
        if last_id > topic.known:
            topic.known = last_id
        self._maybe_fetch(topic)

    def _maybe_fetch(self, topic: _Topic) -> None:
        if topic.cursor is not None and topic.known > topic.cursor and not topic.fetching:
            topic.fetching = True
            gevent.spawn(self._fetch, topic)

    def appended(self, exec_id: str, before: int, tails: Sequence[tuple[str, str]]) -> None:
        """Events a producer of this worker just committed, ids ``before + 1 …``, as ``(type, envelope tail)``.

        When they follow the topic's cursor, its streams get them from memory,
        framed as PostgreSQL frames them, before the producer's caller hears
        back: no wait for the wake-up, no read (issue 10). A read in flight, or
        any other case, and every other worker, take the read instead.
        """
        topic = self._topics.get(exec_id)
        if topic is None or topic.cursor is None or not topic.subscribers:
            return
        if gevent.get_hub() is not self._loop:
            return  # a producer on a thread of its own: its hub is not the streams'
        topic.known = max(topic.known, before + len(tails))
        if not topic.reading and topic.cursor == before:
            # Nothing here yields, so no read starts before the cursor has moved past these:
            # a fetch on its way finds nothing left to read.
            self._deliver(topic, appended_frames(before, tails))
        # Otherwise the read in flight, or the next one, covers them; and events of other
        # workers past these may have been announced meanwhile.
        self._maybe_fetch(topic)

    def _fetch(self, topic: _Topic) -> None:
        try:
            while topic.cursor is not None and topic.known > topic.cursor and topic.subscribers:
                topic.reading = True
                try:
                    with self.db.autocommit() as cur:
                        items, _ = storage.frames_after(cur, topic.exec_id, topic.cursor, FETCH_PAGE)
                finally:
                    topic.reading = False
                counters.EVENT_READS.inc()
                if not items:
                    break
                self._deliver(topic, items)
        except DatabaseUnavailable:
            pass  # logged once per outage by the pool; the safety check retries once it is back
        except psycopg2.Error:
            log.warning("reading new events of one execution failed; will retry")
        finally:
            topic.fetching = False

    def _deliver(self, topic: _Topic, items: Sequence[Item]) -> None:
        """New events of ``topic``, past its cursor: written to each parked stream, queued to the others."""
        size = _size(items)
        topic.cursor = items[-1][0]
        topic.ended = topic.ended or items[-1][1] in TERMINAL_TYPES  # nothing follows a terminal event
        if self.recent_budget:
            topic.remember(items, size, self._budget(topic))
        batch, direct = Batch(items), 0
        for sub in list(topic.subscribers):
            if sub.try_write(batch):
                direct += 1
                if sub.ended:
                    self.endings.add(sub)
            else:
                sub.push(items, size)
        counters.DELIVERED.inc(len(items) * len(topic.subscribers))
        batch.count(direct)

    def chunk(self, payload: str) -> None:
        """Take one chunk notification; queue a whole text chunk to every stream of its execution,
        framed once per mode (SPEC §5.2)."""
        counters.CHUNK_NOTIFICATIONS.inc()
        dropped = self._reassembler.dropped
        whole = self._reassembler.feed(payload)
        if self._reassembler.dropped > dropped:
            counters.CHUNKS_INCOMPLETE.inc(self._reassembler.dropped - dropped)
        if whole is None:
            return
        exec_id, text = whole
        topic = self._topics.get(exec_id)
        if topic is None:
            return
        frames: dict[bool, bytes] = {}
        kind = topic.facts.kind if topic.facts is not None else None
        for sub in list(topic.subscribers):
            if sub.text_mode not in frames:
                frames[sub.text_mode] = _chunk_frame(exec_id, kind, text, sub.text_mode)
            sub.push_chunk(frames[sub.text_mode])


def _size(items: Sequence[Item]) -> int:
    return sum(len(frame) for _, _, frame in items)


def appended_frames(before: int, tails: Sequence[tuple[str, str]]) -> list[Item]:
    """The frames of events ``before + 1 …`` from their envelope tails: the bytes ``storage.frames_after`` reads."""
    items: list[Item] = []
    for event_id, (type_name, tail) in enumerate(tails, before + 1):
        envelope = f'{{"id":{event_id}{tail}'
        items.append((event_id, type_name, framing.stored_event_frame(event_id, type_name, envelope)))
    return items


class Endings:
    """Streams whose terminal event the hub wrote, woken to end once the worker has nothing more urgent.

    An ended stream's greenlet still has work to do: its slot, its end record,
    the response's last chunk, the connection's close. When executions complete
    together, a thousand of those at once delayed the next executions' events
    behind them (issue 10: the p99 was the ``complete`` events). The clients
    have their terminal event already, so the endings wait for an idle loop
    (:data:`IDLE_WAIT_S` at most) and go in batches of :data:`BATCH`, each
    batch behind whatever arrived meanwhile.
    """

    #: The longest an ended stream waits for an idle moment of the worker.
    IDLE_WAIT_S = 0.1
    BATCH = 8

    def __init__(self) -> None:
        self._waiting: collections.deque[Subscriber] = collections.deque()
        self._running = False

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, sub: Subscriber) -> None:
        self._waiting.append(sub)
        if not self._running:
            self._running = True
            gevent.spawn(self._wake_when_idle)

    def _wake_when_idle(self) -> None:
        try:
            while self._waiting:
                with gevent.Timeout(self.IDLE_WAIT_S, False):
                    gevent.idle()
                for _ in range(min(self.BATCH, len(self._waiting))):
                    self._waiting.popleft().wakeup.set()
                gevent.sleep(0)  # that batch ends before the next idle moment is waited for
        finally:
            self._running = False


def _chunk_frame(exec_id: str, kind: str | None, text: str, text_mode: bool) -> bytes:
    """A text chunk frame (SPEC §5.2): the text itself, or the JSON chunk envelope; never an id.

    The envelope names the kind too, as every envelope does (SPEC §4): a multiplexed stream's
    chunks need it (SPEC §5.6), and a single stream's may as well have it.
    """
    if text_mode:
        return framing.event_frame(None, "llm_chunk", text)
    envelope: dict[str, t.Any] = {"type": "llm_chunk", "exec_id": exec_id}
    if kind is not None:
        envelope["kind"] = kind
    envelope["data"] = {"content": text}
    return framing.event_frame(None, "llm_chunk", json.dumps(envelope, ensure_ascii=False))
