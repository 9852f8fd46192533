"""The worker's listener hub: one LISTEN connection, shared reads, fan-out (SPEC §3, §5, §8).

::

    producers ──commit──► PostgreSQL ──NOTIFY exec_id:last_id──► listener greenlet
                                                                       │ wake-up
    safety check (one batched query per poll interval) ────────────────┤
                                                                       ▼
                                           Topic(exec_id): ONE read of new rows,
                                           framed once, pushed to every Subscriber

A stream subscribes first, then replays from the table and reports where its
replay ended (``caught_up``), so nothing falls between replay and live; it
de-duplicates by id. A notification is never the only path to an event: the
safety check compares every subscribed execution's ``last_event_id`` with the
hub's cursor. Only this module holds process-wide mutable state (STYLE §4).
"""

from __future__ import annotations

import collections
import logging
import random
import typing as t

import gevent
import gevent.event
import gevent.lock
import gevent.select
import psycopg2
import psycopg2.extensions

from . import framing
from . import metrics
from . import storage
from .db import PoolTimeout
from .db import connect

if t.TYPE_CHECKING:
    from .db import Database

log = logging.getLogger(__name__)

Item = tuple[int, str, bytes]  # (event id, type, framed bytes)

FETCH_PAGE = 1000
#: Frames a stream may have queued before it must re-read from the table instead.
QUEUE_BYTES = 1024 * 1024
LISTENER_NAME = "streamapp-listener"
_SAFETY_CHUNK = 5000


class Subscriber:
    """One stream's mailbox: bounded; on overflow it asks its stream to re-read the table."""

    __slots__ = ("exec_id", "items", "queued_bytes", "wakeup", "overflowed", "closing", "limit", "poll_ms")

    def __init__(self, exec_id: str, limit: int, poll_ms: int) -> None:
        self.exec_id = exec_id
        self.items: collections.deque[Item] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = gevent.event.Event()
        self.overflowed = False
        self.closing = False
        self.limit = limit
        self.poll_ms = poll_ms

    def push(self, batch: list[Item], size: int) -> None:
        if not self.overflowed:
            if len(self.items) + len(batch) > self.limit or self.queued_bytes + size > QUEUE_BYTES:
                # Never drop a durable event: forget the queue, re-read from the cursor.
                self.overflowed = True
                self.items.clear()
                self.queued_bytes = 0
                metrics.OVERFLOWS.inc()
            else:
                self.items.extend(batch)
                self.queued_bytes += size
        self.wakeup.set()

    def take(self) -> tuple[list[Item], bool]:
        """Queued items and whether the stream must re-read the table instead."""
        self.wakeup.clear()
        items, overflowed = list(self.items), self.overflowed
        self.items.clear()
        self.queued_bytes = 0
        self.overflowed = False
        return items, overflowed


class _Topic:
    __slots__ = ("exec_id", "subscribers", "cursor", "known", "fetching")

    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None  # highest id fanned out, None until a replay reports
        self.known = 0  # highest id known to exist
        self.fetching = False


class Hub:
    """Fan-out of committed events to the streams of one worker process."""

    def __init__(
        self,
        db: Database,
        listen_url: str,
        *,
        listen: bool = True,
        default_poll_ms: int = 500,
        queue_limit: int = 10_000,
        max_concurrent_replays: int = 32,
        probe_s: float = 5.0,
    ) -> None:
        self.db = db
        self.listen_url = listen_url
        self.listen = listen
        self.default_poll_ms = default_poll_ms
        self.queue_limit = queue_limit
        self.probe_s = probe_s
        self.replays = gevent.lock.BoundedSemaphore(max_concurrent_replays)
        self.open_streams = 0
        self.listener_healthy = False
        self._topics: dict[str, _Topic] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._recheck = gevent.event.Event()

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Start the listener and safety-check greenlets (once, in the worker)."""
        if self._greenlets:
            return
        if self.listen:
            self._greenlets.append(gevent.spawn(self._listen_forever))
        else:
            self.listener_healthy = True
        self._greenlets.append(gevent.spawn(self._safety_forever))

    def stop(self) -> None:
        """End every stream (they resume elsewhere with Last-Event-ID) and the greenlets."""
        self._stopping = True
        for topic in list(self._topics.values()):
            for sub in topic.subscribers:
                sub.closing = True
                sub.wakeup.set()
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- streams ----------------------------------------------------------

    def subscribe(self, exec_id: str, poll_ms: int | None = None) -> Subscriber:
        self.start()
        topic = self._topics.get(exec_id)
        if topic is None:
            topic = self._topics[exec_id] = _Topic(exec_id)
        sub = Subscriber(exec_id, self.queue_limit, poll_ms or self.default_poll_ms)
        topic.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        topic = self._topics.get(sub.exec_id)
        if topic is None:
            return
        topic.subscribers.discard(sub)
        if not topic.subscribers:
            del self._topics[sub.exec_id]

    def caught_up(self, sub: Subscriber, last_id: int) -> None:
        """A stream's replay read the table up to ``last_id``."""
        topic = self._topics.get(sub.exec_id)
        if topic is None:
            return
        if topic.cursor is None:
            topic.cursor = last_id
        self._maybe_fetch(topic)

    def wake(self, exec_id: str, last_id: int) -> None:
        """Record that ``exec_id`` has events up to ``last_id`` (from NOTIFY or the safety check)."""
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

    def _fetch(self, topic: _Topic) -> None:
        try:
            while topic.cursor is not None and topic.known > topic.cursor and topic.subscribers:
                with self.db.transaction() as cur:
                    rows, _ = storage.events_after(cur, topic.exec_id, topic.cursor, FETCH_PAGE)
                metrics.EVENT_READS.inc()
                if not rows:
                    break
                batch = [(i, typ, framing.stored_event_frame(i, typ, env)) for i, typ, env in rows]
                size = sum(len(item[2]) for item in batch)
                topic.cursor = rows[-1][0]
                for sub in list(topic.subscribers):
                    sub.push(batch, size)
                metrics.DELIVERED.inc(len(batch) * len(topic.subscribers))
        except (psycopg2.Error, PoolTimeout):
            # The database is away; the safety check retries once it is back.
            log.warning("reading new events of one execution failed; will retry")
        finally:
            topic.fetching = False

    # -- the listener -----------------------------------------------------

    def _listen_forever(self) -> None:
        backoff = 0.1
        while not self._stopping:
            conn = None
            try:
                conn = connect(self.listen_url, LISTENER_NAME)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {storage.CHANNEL}")
                self.listener_healthy = True
                metrics.LISTENER_RECONNECTS.inc()
                backoff = 0.1
                # Notifications sent while we were away are lost: re-check everyone now.
                self._recheck.set()
                self._drain(conn)
            except (psycopg2.Error, OSError):
                log.warning("listener connection lost; reconnecting in %.1f s", backoff)
            finally:
                self.listener_healthy = False
                if conn is not None and not conn.closed:
                    conn.close()
            gevent.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 5.0)

    def _drain(self, conn: psycopg2.extensions.connection) -> None:
        while not self._stopping:
            readable, _, _ = gevent.select.select([conn], [], [], self.probe_s)
            if not readable:
                with conn.cursor() as cur:  # liveness probe while idle
                    cur.execute("SELECT 1")
            conn.poll()
            while conn.notifies:
                note = conn.notifies.pop(0)
                metrics.NOTIFICATIONS.inc()
                exec_id, _, last = note.payload.rpartition(":")
                if last.isdigit():
                    self.wake(exec_id, int(last))

    # -- the safety check -------------------------------------------------

    def _poll_interval(self) -> float:
        polls = [s.poll_ms for topic in self._topics.values() for s in topic.subscribers]
        return min(polls, default=self.default_poll_ms) / 1000.0

    def _safety_forever(self) -> None:
        while not self._stopping:
            self._recheck.wait(timeout=self._poll_interval())
            self._recheck.clear()
            if self._topics:
                self.safety_check()

    def safety_check(self) -> None:
        """One batched query for every subscribed execution; wake those that moved."""
        exec_ids = list(self._topics)
        try:
            for start in range(0, len(exec_ids), _SAFETY_CHUNK):
                with self.db.transaction() as cur:
                    last_ids = storage.last_event_ids(cur, exec_ids[start : start + _SAFETY_CHUNK])
                metrics.SAFETY_CHECKS.inc()
                for exec_id, last_id in last_ids.items():
                    self.wake(exec_id, last_id)
        except (psycopg2.Error, PoolTimeout):
            log.warning("safety check failed; the database may be unavailable")
