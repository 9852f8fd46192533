"""Stream slots: the per-user stream limit across every worker, and this worker's open streams (SPEC §5, §7).

A stream holds one slot of its user's limit on its worker from connect to
close. Each worker has one row per user it serves (table ``stream_counts``),
so admitting a stream sums one row per worker, however many streams the user
holds. The worker's :class:`Slots` keeps the true counts in memory and its
hub writes them back at every maintenance round (:meth:`Slots.write_back`): a
give-back that failed, or one that raced the round, is corrected there, and
rows of a worker that died stop counting after :func:`stale_after`.
"""

from __future__ import annotations

import collections
import logging
import threading
import typing as t

import psycopg2

from . import counters
from .errors import DatabaseUnavailable
from .errors import TooManyStreams
from .storage import async_commit

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

# One round trip: the statements run as one implicit transaction, so the
# advisory lock (released at its end) makes sum-then-add atomic for one user
# across workers; counts are not durable state, so no WAL flush is awaited.
_TAKE = async_commit("""
SELECT pg_advisory_xact_lock(hashtext('streamapp-slots:' || %(user_id)s));
INSERT INTO stream_counts AS c (user_id, worker, streams)
SELECT %(user_id)s, %(worker)s, 1
WHERE (SELECT coalesce(sum(streams), 0) FROM stream_counts
       WHERE user_id = %(user_id)s AND seen_at > now() - make_interval(secs => %(stale_s)s)) < %(limit)s
ON CONFLICT (user_id, worker) DO UPDATE SET streams = c.streams + 1, seen_at = now()
RETURNING streams
""")
_GIVE_BACK = async_commit("""
UPDATE stream_counts AS c SET streams = greatest(c.streams - ended.n, 0)
FROM unnest(%(users)s::text[], %(counts)s::int[]) AS ended(u, n)
WHERE c.user_id = ended.u AND c.worker = %(worker)s
""")
_SYNC = async_commit("""
INSERT INTO stream_counts AS c (user_id, worker, streams)
SELECT u, %(worker)s, n FROM unnest(%(users)s::text[], %(counts)s::int[]) AS held(u, n)
ON CONFLICT (user_id, worker) DO UPDATE SET streams = excluded.streams, seen_at = now();
DELETE FROM stream_counts WHERE worker = %(worker)s AND NOT user_id = ANY(%(users)s::text[]);
DELETE FROM stream_counts WHERE seen_at < now() - make_interval(secs => %(forget_s)s)
""")
#: Rows of workers that died are deleted once they are this much older than stale: by then they
#: have long stopped counting, and the table must not grow with every worker ever started.
FORGET_AFTER_STALE = 10


def stale_after(refresh_s: float) -> float:
    """Seconds after which the counts of a worker that stopped writing them no longer count."""
    return max(3 * refresh_s, 30.0)


def take(cur: Cursor, user_id: str, worker: str, limit: int, stale_s: float) -> bool:
    """Count one more stream of ``user_id`` on ``worker``, unless they hold ``limit`` already.

    Run it on an autocommit cursor: the statements form their own transaction.
    """
    params = {"user_id": user_id, "worker": worker, "stale_s": stale_s, "limit": limit}
    cur.execute(_TAKE, params)
    return cur.fetchone() is not None


def _per_user(counts: Mapping[str, int]) -> dict[str, list[t.Any]]:
    """``counts`` as the two arrays the statements ``unnest``: users and their counts, in one order."""
    return {"users": list(counts), "counts": list(counts.values())}


def give_back(cur: Cursor, worker: str, ended: Mapping[str, int]) -> None:
    """Count ``ended[user]`` streams fewer for each user on ``worker``; never below zero."""
    cur.execute(_GIVE_BACK, {"worker": worker, **_per_user(ended)})


def sync(cur: Cursor, worker: str, counts: Mapping[str, int], stale_s: float) -> None:
    """Write ``worker``'s true counts (users with open streams only) and refresh them, in one round trip.

    Users missing from ``counts`` lose their row, whatever a failed give-back
    left there, and rows of workers long dead are deleted. Run it on an
    autocommit cursor.
    """
    cur.execute(_SYNC, {"worker": worker, **_per_user(counts), "forget_s": stale_s * FORGET_AFTER_STALE})


class Slots:
    """The slots this worker's streams hold: per user (the truth for ``stream_counts``) and in all."""

    def __init__(self, db: Database, refresh_s: float) -> None:
        self.db = db
        #: Seconds between maintenance rounds; rows older than :func:`stale_after` of it stop counting.
        self.refresh_s = refresh_s
        #: This worker's name in ``stream_counts``; the hub names it when it starts, in the worker.
        self.worker_id = ""
        #: Streams open on this worker, for its own limit (SPEC §5: 503).
        self.open = 0
        self._held: collections.Counter[str] = collections.Counter()
        self._changed = False  # since the last round wrote them
        #: Streams that ended while a give-back was on its way to the database: the next one's.
        self._ended: collections.Counter[str] = collections.Counter()
        self._giving_back = False
        self._lock = threading.Lock()

    @property
    def held(self) -> dict[str, int]:
        """Open streams per user on this worker."""
        return dict(self._held)

    def take(self, cur: Cursor, user_id: str, limit: int) -> None:
        """Hold a slot for a new stream of ``user_id``, unless they hold ``limit`` across workers.

        Counted here first and forgotten last, so a maintenance round running
        meanwhile errs on the side of one stream too many, never too few.
        Run it on an autocommit cursor.

        :raises TooManyStreams: the user holds ``limit`` streams already.
        """
        self._hold(user_id)
        try:
            taken = take(cur, user_id, self.worker_id, limit, stale_after(self.refresh_s))
        except BaseException:
            self._release({user_id: 1})
            raise
        if not taken:
            self._release({user_id: 1})
            counters.stream_refused("user_limit")
            # Retry-After 1: a stream the user closes gives its slot back at once (SPEC §5).
            raise TooManyStreams(f"you have {limit} streams open; close one or retry later", retry_after=1)
        self.open += 1

    def give_back(self, user_id: str) -> None:
        """A stream of ``user_id`` ended: its slot is free at once, here and for every worker (SPEC §5).

        Streams that end while a give-back is on its way go to the database together in the
        next one: a thousand streams ending at once (their executions completed) are a few
        statements, not a thousand updates of one row waiting on each other's locks and holding
        the pool from the appends meanwhile (issue 10).
        """
        self.open -= 1
        with self._lock:
            self._ended[user_id] += 1
            if self._giving_back:
                return  # the give-back under way takes this one next
            self._giving_back = True
        try:
            while True:
                with self._lock:
                    ended, self._ended = self._ended, collections.Counter()
                    if not ended:
                        self._giving_back = False
                        return
                self._write_give_back(ended)
        except BaseException:
            with self._lock:  # killed mid-way: forget what is left here; the next round writes the truth
                ended, self._ended, self._giving_back = self._ended, collections.Counter(), False
            self._release(ended)
            raise

    def _write_give_back(self, ended: collections.Counter[str]) -> None:
        try:
            with self.db.autocommit() as cur:
                give_back(cur, self.worker_id, ended)
        except DatabaseUnavailable:
            pass  # an outage, logged once by the pool; the next round writes the true count
        except psycopg2.Error:
            log.warning("could not count %d closed streams off; the hub corrects it", ended.total())
        finally:
            self._release(ended)

    def write_back(self) -> None:
        """Write this worker's counts; no query while it holds none and nothing changed."""
        if not self._held and not self._changed:
            return
        self._changed = False
        try:
            with self.db.autocommit() as cur:
                sync(cur, self.worker_id, dict(self._held), stale_after(self.refresh_s))
        except BaseException:
            self._changed = True  # write them at the next round
            raise

    def _hold(self, user_id: str) -> None:
        self._held[user_id] += 1
        self._changed = True

    def _release(self, ended: Mapping[str, int]) -> None:
        for user_id, n in ended.items():
            self._held[user_id] -= n
            self._changed = True
            if self._held[user_id] <= 0:
                del self._held[user_id]
