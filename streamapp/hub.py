"""The worker's listener hub: one LISTEN connection, shared reads, fan-out (SPEC §3, §5, §8).

::

    producers ──commit──► PostgreSQL ──NOTIFY exec_id:last_id──► listener greenlet
                                                                       │ wake-up
    safety check (one batched query per poll interval) ────────────────┤
                                                                       ▼
                                           fanout.Topics: ONE read of new rows per
                                           execution, framed once, to every Subscriber

A notification is never the only path to an event: the safety check compares
every subscribed execution's ``last_event_id`` with the hub's cursor. The
maintenance round writes back this worker's stream slots (``slots``) and ends
streams whose credentials were revoked. Only the hub, and what it owns, holds
process-wide mutable state (STYLE §4).
"""

from __future__ import annotations

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
import psycopg2
import psycopg2.extensions

from . import chunks
from . import counters
from . import storage
from .db import connect
from .db import describe
from .errors import DatabaseUnavailable
from .event_filter import Item
from .fanout import Topics
from .slots import Slots
from .storage import Facts
from .subscriber import Subscriber

if t.TYPE_CHECKING:
    from .db import Database

log = logging.getLogger(__name__)

LISTENER_NAME = "streamapp-listener"
_SAFETY_CHUNK = 5000
#: Checks credentials of open streams and refreshes slots this often by default.
MAINTENANCE_S = 15.0
# The share of PostgreSQL's 8 GB NOTIFY queue in use, 0 to 1: a listener that stops reading fills it.
_SELECT_QUEUE_USAGE = "SELECT pg_notification_queue_usage()"

RevokedCheck = Callable[[t.Any, set[str], set[str]], tuple[set[str], set[str]]]


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
        recent_budget: int = 0,
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
        self.probe_s = probe_s
        self.replays = gevent.lock.BoundedSemaphore(max_concurrent_replays)
        self.listener_healthy = False
        self.topics = Topics(db, queue_limit, recent_budget)
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._recheck = gevent.event.Event()
        self.maintenance_s = maintenance_s
        self.revoked_check = revoked_check
        #: (channel, callback): revocations for the token cache; ``None`` tells it to forget all.
        self.auth_changes = auth_changes
        #: Loops that run beside the hub's own in each worker: the sweeper, retention (issue 13).
        self.background = tuple(background)
        #: The stream slots of this worker (issue 6): the truth maintain() writes back.
        self.slots = Slots(db, maintenance_s)

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Start the listener and safety-check greenlets (once, in the worker; never again after stop)."""
        if self._greenlets or self._stopping:
            return
        # Made here, in the worker, so it names the worker and not gunicorn's master.
        self.slots.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
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
        for sub in self.topics.subscribers():
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

    @property
    def worker_id(self) -> str:
        """This worker's name (host, pid, random), made by :meth:`start`."""
        return self.slots.worker_id

    # -- streams ----------------------------------------------------------

    def subscribe(self, exec_id: str, poll_ms: int | None = None, **stream: t.Any) -> Subscriber:
        """Register a stream; ``stream`` holds ``facts`` (the execution's :class:`~storage.Facts`), maybe
        a ``subscriber`` class, and its keyword arguments (``user_id``, ``token_prefix``, ``text_mode``,
        ``types``, ``connected_at``, ``socket``)."""
        self.start()
        sub = self.topics.subscribe(exec_id, poll_ms or self.default_poll_ms, **stream)
        if self._stopping:
            sub.close("shutdown")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.topics.unsubscribe(sub)

    def caught_up(self, sub: Subscriber, last_id: int, page: Sequence[Item] = ()) -> None:
        """A stream's replay read the table up to ``last_id``, ``page`` last."""
        self.topics.caught_up(sub, last_id, page)

    def followed(self, exec_id: str) -> tuple[Facts, int] | None:
        """The facts of ``exec_id`` and the hub's cursor, while it streams it and has not seen it end."""
        return self.topics.followed(exec_id)

    def recent(self, sub: Subscriber, cursor: int) -> list[Item] | None:
        """The frames after ``cursor`` from the hub's memory, or ``None``: the stream reads the table."""
        return self.topics.recent(sub, cursor)

    def wake(self, exec_id: str, last_id: int) -> None:
        """Record that ``exec_id`` has events up to ``last_id`` (from NOTIFY or the safety check)."""
        self.topics.wake(exec_id, last_id)

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
        # One watcher for the connection's life, not a select() (a watcher set) per wake-up:
        # the listener wakes once per append (issue 10). The timer is new per wait: a gevent
        # timer restarted after it fired once fires at once from then on.
        hub = gevent.get_hub()
        readable = hub.loop.io(conn.fileno(), 1)
        try:
            while not self._stopping:
                idle = gevent.Timeout(self.probe_s)
                idle.start()
                try:
                    hub.wait(readable)
                except gevent.Timeout as exc:
                    if exc is not idle:
                        raise
                    with conn.cursor() as cur:  # liveness probe while idle
                        cur.execute("SELECT 1")
                finally:
                    idle.close()
                self._take_notifications(conn)
        finally:
            readable.close()

    def _take_notifications(self, conn: psycopg2.extensions.connection) -> None:
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
        self.topics.chunk(payload)

    # -- the safety check -------------------------------------------------

    def _safety_forever(self) -> None:
        while not self._stopping:
            # The shortest poll_ms of its streams: the longest any of them may lag (SPEC §5).
            polls = [sub.poll_ms for sub in self.topics.subscribers()]
            self._recheck.wait(timeout=min(polls, default=self.default_poll_ms) / 1000.0)
            self._recheck.clear()
            if self.topics:
                self.safety_check()

    def safety_check(self) -> None:
        """One batched query for every subscribed execution; wake those that moved."""
        exec_ids = self.topics.exec_ids()
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

    # -- maintenance: stream slots and credentials -------------------------

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
        steps: tuple[tuple[Callable[[], None], str], ...] = (
            (self.slots.write_back, "writing stream counts"),
            (self._end_revoked, "checking for revoked credentials"),
            (self._read_queue_usage, "reading the notification queue's usage"),
        )
        for step, what in steps:
            try:
                step()
            except DatabaseUnavailable:
                pass  # an outage was logged once by the pool; the next round retries
            except psycopg2.Error:
                log.warning("%s failed; the next round retries", what)

    def _read_queue_usage(self) -> None:
        """``streamapp_notification_queue_usage``: a queue that fills stops every NOTIFY (SPEC §9)."""
        with self.db.autocommit() as cur:
            cur.execute(_SELECT_QUEUE_USAGE)
            (usage,) = t.cast(tuple[float], cur.fetchone())
        counters.NOTIFICATION_QUEUE_USAGE.set(usage)

    def _end_revoked(self) -> None:
        """Close the streams whose user was disabled or whose token was revoked."""
        subs = self.topics.subscribers()
        if self.revoked_check is None or not subs:
            return
        user_ids = {s.user_id for s in subs if s.user_id}
        prefixes = {s.token_prefix for s in subs if s.token_prefix}
        with self.db.autocommit() as cur:
            users, tokens = self.revoked_check(cur, user_ids, prefixes)
        for sub in subs:
            if sub.user_id in users or (sub.token_prefix and sub.token_prefix in tokens):
                sub.close("revoked")
