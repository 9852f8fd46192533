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
import json
import logging
import os
import random
import secrets
import socket
import typing as t
from collections.abc import Callable
from collections.abc import Sequence

import gevent
import gevent.event
import gevent.lock
import gevent.select
import psycopg2
import psycopg2.extensions

from . import chunks
from . import counters
from . import framing
from . import slots
from . import storage
from .db import connect
from .db import describe
from .errors import DatabaseUnavailable
from .subscriber import Item
from .subscriber import Rendered
from .subscriber import Subscriber
from .subscriber import direct_sent

if t.TYPE_CHECKING:
    from .db import Database

log = logging.getLogger(__name__)

FETCH_PAGE = 1000
LISTENER_NAME = "streamapp-listener"
_SAFETY_CHUNK = 5000
#: Checks credentials of open streams and refreshes slots this often by default.
MAINTENANCE_S = 15.0
# The share of PostgreSQL's 8 GB NOTIFY queue in use, 0 to 1: a listener that stops reading fills it.
_SELECT_QUEUE_USAGE = "SELECT pg_notification_queue_usage()"

RevokedCheck = Callable[[t.Any, set[str], set[str]], tuple[set[str], set[str]]]


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
        maintenance_s: float = MAINTENANCE_S,
        revoked_check: RevokedCheck | None = None,
        background: Sequence[Callable[[], None]] = (),
        auth_changes: tuple[str, Callable[[str | None], None]] | None = None,
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
        self.maintenance_s = maintenance_s
        self.revoked_check = revoked_check
        #: (channel, callback): revocations for the token cache; ``None`` tells it to forget all.
        self.auth_changes = auth_changes
        #: Loops that run beside the hub's own in each worker: the sweeper, retention (issue 13).
        self.background = tuple(background)
        self.worker_id = ""
        self._reassembler = chunks.Reassembler()
        # Per-user stream counts of this worker (issue 6): the truth maintain() writes back.
        self._stream_counts: collections.Counter[str] = collections.Counter()
        self._counts_changed = False  # since the last round wrote them

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Start the listener and safety-check greenlets (once, in the worker; never again after stop)."""
        if self._greenlets or self._stopping:
            return
        # Made here, in the worker, so it names the worker and not gunicorn's master.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._greenlets.append(gevent.spawn(self._maintain_forever))
        if self.listen:
            self._greenlets.append(gevent.spawn(self._listen_forever))
        else:
            self.listener_healthy = True
        self._greenlets.append(gevent.spawn(self._safety_forever))
        self._greenlets.extend(gevent.spawn(loop) for loop in self.background)

    def stop(self) -> None:
        """Stop for good: end every stream (they resume elsewhere with Last-Event-ID) and the greenlets.

        From here on the stream view refuses new streams (503, SPEC §5.4), and a
        stream that subscribes anyway (its view ran just before) is ended at once.
        """
        self._stopping = True
        for sub in self._subscribers():
            sub.close("shutdown")
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    @property
    def trusts_notifications(self) -> bool:
        """Whether a revocation would reach this worker now: a listener is connected and listening."""
        return self.listen and self.listener_healthy and not self._stopping

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- streams ----------------------------------------------------------

    def subscribe(self, exec_id: str, poll_ms: int | None = None, **who: t.Any) -> Subscriber:
        """Register a stream; ``who`` is ``user_id``, ``token_prefix`` and ``text_mode``."""
        self.start()
        topic = self._topics.get(exec_id)
        if topic is None:
            topic = self._topics[exec_id] = _Topic(exec_id)
        sub = Subscriber(exec_id, self.queue_limit, poll_ms or self.default_poll_ms, **who)
        topic.subscribers.add(sub)
        if self._stopping:
            sub.close("shutdown")
        return sub

    def _subscribers(self) -> list[Subscriber]:
        return [sub for topic in self._topics.values() for sub in topic.subscribers]

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
                with self.db.autocommit() as cur:
                    batch, _ = storage.frames_after(cur, topic.exec_id, topic.cursor, FETCH_PAGE)
                counters.EVENT_READS.inc()
                if not batch:
                    break
                size = sum(len(frame) for _, _, frame in batch)
                topic.cursor = batch[-1][0]
                rendered: dict[t.Any, Rendered] = {}
                direct = 0
                for sub in list(topic.subscribers):
                    if sub.try_write(batch, rendered):
                        direct += 1
                    else:
                        sub.push(batch, size)
                self._count(batch, len(topic.subscribers), direct, rendered)
        except DatabaseUnavailable:
            pass  # logged once per outage by the pool; the safety check retries once it is back
        except psycopg2.Error:
            log.warning("reading new events of one execution failed; will retry")
        finally:
            topic.fetching = False

    @staticmethod
    def _count(batch: Sequence[Item], streams: int, direct: int, rendered: dict[t.Any, Rendered]) -> None:
        """Count one batch's fan-out: a few increments and one observation, whatever the streams.

        Streams on the generator path count their own frames when they write them.
        """
        counters.DELIVERED.inc(len(batch) * streams)
        if not direct:
            return
        counters.DIRECT_WRITES.inc(direct)
        sent = direct_sent(rendered)
        if sent:
            counters.events_sent(sent)
            # Every direct write of the batch is done: its oldest event's commit → send (SPEC §9).
            counters.commit_to_send(batch[0][2])

    # -- the listener -----------------------------------------------------

    def _listen_forever(self) -> None:
        backoff = 0.1
        lost: BaseException | None = None  # why the last connection ended, until a reconnect tells more
        while not self._stopping:
            conn = None
            try:
                conn = connect(self.listen_url, LISTENER_NAME)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {storage.CHANNEL}; LISTEN {chunks.CHANNEL}")
                    if self.auth_changes is not None:
                        cur.execute(f"LISTEN {self.auth_changes[0]}")
                        # Revocations sent while no listener was connected are lost: forget all.
                        self.auth_changes[1](None)
                self.listener_healthy = True
                counters.LISTENER_RECONNECTS.inc()
                self.db.outage.up()
                if lost is not None:
                    # Only this connection was lost (pg_terminate_backend, a proxy): one line.
                    log.warning("listener connection lost (%s); reconnected", describe(lost))
                    lost = None
                backoff = 0.1
                # Notifications sent while we were away are lost: re-check everyone now.
                self._recheck.set()
                self._drain(conn)
            except (psycopg2.Error, OSError) as exc:
                if self.listener_healthy:
                    lost = exc  # reconnect first: a lost listener and an outage are logged differently
                else:
                    # The database is away: one line per outage, however many retries (SPEC §2).
                    lost = None
                    self.db.outage.down(exc)
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
                if note.channel == chunks.CHANNEL:
                    self._on_chunk(note.payload)
                    continue
                if self.auth_changes is not None and note.channel == self.auth_changes[0]:
                    self.auth_changes[1](note.payload)
                    continue
                counters.NOTIFICATIONS.inc()
                woken = storage.parse_wake(note.payload)
                if woken is not None:
                    self.wake(*woken)

    def _on_chunk(self, payload: str) -> None:
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
        frames: dict[bool, bytes] = {}  # rendered once per mode, shared by every stream
        for sub in list(topic.subscribers):
            if sub.text_mode not in frames:
                frames[sub.text_mode] = _chunk_frame(exec_id, text, sub.text_mode)
            sub.push_chunk(frames[sub.text_mode])

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
                with self.db.autocommit() as cur:
                    last_ids = storage.last_event_ids(cur, exec_ids[start : start + _SAFETY_CHUNK])
                counters.SAFETY_CHECKS.inc()
                for exec_id, last_id in last_ids.items():
                    self.wake(exec_id, last_id)
        except DatabaseUnavailable:
            pass  # logged once per outage by the pool; the next check retries
        except psycopg2.Error:
            log.warning("safety check failed; will retry")

    # -- maintenance: per-user stream counts and credentials -----------------

    def hold_slot(self, user_id: str) -> None:
        """Count an open stream of ``user_id`` until :meth:`release_slot`; maintain() writes it back."""
        self._stream_counts[user_id] += 1
        self._counts_changed = True

    def release_slot(self, user_id: str) -> None:
        """Stop counting one stream of ``user_id``; the next round writes the new count."""
        self._stream_counts[user_id] -= 1
        self._counts_changed = True
        if self._stream_counts[user_id] <= 0:
            del self._stream_counts[user_id]

    @property
    def stream_counts(self) -> dict[str, int]:
        return dict(self._stream_counts)

    def _maintain_forever(self) -> None:
        while not self._stopping:
            gevent.sleep(self.maintenance_s)
            self.maintain()

    def maintain(self) -> None:
        """Write this worker's per-user stream counts; end streams whose user or token was revoked;
        read the notification queue's usage for ``/metrics``.

        Three queries per interval per worker, whatever the number of streams
        (and never one per scrape). Each has its own error handling: a failed
        count write must not skip the revocation check of that round, nor the
        other way round.
        """
        subs = self._subscribers()
        # An outage was logged once by the pool; the next round retries both.
        try:
            self._refresh_slots()
        except DatabaseUnavailable:
            pass
        except psycopg2.Error:
            log.warning("writing stream counts failed; the next round retries")
        try:
            self._end_revoked(subs)
        except DatabaseUnavailable:
            pass
        except psycopg2.Error:
            log.warning("checking for revoked credentials failed; the next round retries")
        try:
            self._read_queue_usage()
        except DatabaseUnavailable:
            pass
        except psycopg2.Error:
            log.warning("reading the notification queue's usage failed; the next round retries")

    def _read_queue_usage(self) -> None:
        """``streamapp_notification_queue_usage``: a queue that fills stops every NOTIFY (SPEC §9)."""
        with self.db.autocommit() as cur:
            cur.execute(_SELECT_QUEUE_USAGE)
            (usage,) = t.cast(tuple[float], cur.fetchone())
        counters.NOTIFICATION_QUEUE_USAGE.set(usage)

    def _refresh_slots(self) -> None:
        """Write this worker's stream counts; no query while it holds none and nothing changed."""
        if not self._stream_counts and not self._counts_changed:
            return
        self._counts_changed = False
        try:
            with self.db.autocommit() as cur:
                slots.sync(cur, self.worker_id, dict(self._stream_counts), slots.stale_after(self.maintenance_s))
        except BaseException:
            self._counts_changed = True  # write them at the next round
            raise

    def _end_revoked(self, subs: list[Subscriber]) -> None:
        """Close the streams whose user was disabled or whose token was revoked."""
        if self.revoked_check is None or not subs:
            return
        user_ids = {s.user_id for s in subs if s.user_id}
        prefixes = {s.token_prefix for s in subs if s.token_prefix}
        with self.db.autocommit() as cur:
            users, tokens = self.revoked_check(cur, user_ids, prefixes)
        for sub in subs:
            if sub.user_id in users or (sub.token_prefix and sub.token_prefix in tokens):
                sub.close("revoked")


def _chunk_frame(exec_id: str, text: str, text_mode: bool) -> bytes:
    """A text chunk frame (SPEC §5.2): the text itself, or the JSON chunk envelope; never an id."""
    if text_mode:
        return framing.event_frame(None, "llm_chunk", text)
    envelope = {"type": "llm_chunk", "exec_id": exec_id, "data": {"content": text}}
    return framing.event_frame(None, "llm_chunk", json.dumps(envelope, ensure_ascii=False))
