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
import dataclasses
import logging
import threading
import typing as t

import gevent
import psycopg2

from . import counters
from . import storage
from .errors import DatabaseUnavailable
from .errors import TooManyStreams
from .storage import Execution
from .storage import async_commit

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Mapping

    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

# streamapp_take_slot and streamapp_open_stream (migration 0008) hold a per-user advisory lock
# to the end of their implicit transaction, which makes sum-then-add atomic for one user across
# workers; counts are not durable state, so no WAL flush is awaited.
_TAKE = async_commit("SELECT streamapp_take_slot(%(user_id)s, %(worker)s, %(limit)s, %(stale_s)s)")
_OPEN = async_commit("""
SELECT * FROM streamapp_open_stream(
    %(exec_id)s, %(kind)s, %(cursor)s, %(take)s, %(user_id)s, %(any_owner)s, %(worker)s, %(limit)s, %(stale_s)s,
    %(returned)s
)
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
#: The longest an ended stream's slot waits to go back with others (well under a Retry-After's 1 s).
GIVE_BACK_DELAY_S = 0.05
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
    return bool(t.cast(tuple[bool], cur.fetchone())[0])


@dataclasses.dataclass(frozen=True)
class Reader:
    """Who opens a stream, as the default authorization rule sees them: a slot may be taken in the
    lookup's own round trip only for a stream that rule lets them read (``auth.owner_or_admin``)."""

    user_id: str
    any_owner: bool  # an admin reads every execution
    default_rule: bool  # False: a host's ``authorize`` hook decides, after the lookup

    def sees(self, owner_id: str) -> bool:
        """Whether the default rule lets this reader read an execution of ``owner_id``."""
        return self.any_owner or owner_id == self.user_id

    def runs(self, execution: Execution, cursor: int) -> bool:
        """Whether a stream of ``execution`` from ``cursor`` runs for this reader under the default
        rule: what :func:`open_stream`'s statement decides before it takes a slot."""
        return self.sees(execution["owner_id"]) and not storage.ended_at(execution, cursor)


def open_stream(
    cur: Cursor,
    kind: str,
    exec_id: str,
    cursor: int,
    reader: Reader,
    worker: str,
    limit: int,
    stale_s: float,
    returned: int = 0,
    *,
    take: bool = True,
) -> tuple[Execution | None, bool]:
    """The execution, and whether a slot of ``reader`` was taken for its stream, in one round trip.

    A slot is taken only when ``take``, under the default rule, for a reader it lets in, when the
    execution has not ended at ``cursor``. First, in any case, ``returned`` slots of
    the reader's ended streams on ``worker`` are given back. Run it on an autocommit cursor.
    """
    params = {
        "exec_id": exec_id,
        "kind": kind,
        "cursor": cursor,
        "take": take and reader.default_rule,
        "user_id": reader.user_id,
        "any_owner": reader.any_owner,
        "worker": worker,
        "limit": limit,
        "stale_s": stale_s,
        "returned": returned,
    }
    cur.execute(_OPEN, params)
    row = cur.fetchone()
    if row is None:
        return None, False
    return storage.execution_from_row(row[:-1]), bool(row[-1])


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
        self._flush_due = False  # a later give-back is scheduled
        self._lock = threading.Lock()

    @property
    def held(self) -> dict[str, int]:
        """Open streams per user on this worker."""
        return dict(self._held)

    def take(self, cur: Cursor, user_id: str, limit: int) -> None:
        """Hold a slot for a new stream of ``user_id``, unless they hold ``limit`` across workers.

        Run it on an autocommit cursor.

        :raises TooManyStreams: the user holds ``limit`` streams already.
        """
        if not self._counted(user_id, lambda: take(cur, user_id, self.worker_id, limit, self._stale_s)):
            raise self.refuse(limit)

    def take_on_open(
        self, cur: Cursor, kind: str, exec_id: str, cursor: int, reader: Reader, limit: int
    ) -> tuple[Execution | None, bool]:
        """Look the execution up and, where :func:`open_stream` may, hold the stream's slot in the same
        round trip; the execution and whether the slot is held. Run it on an autocommit cursor.

        A slot of the user's that ended here and still waits to go back is this stream's,
        under the default rule: the database counts it still, so the lookup writes nothing.
        """
        if reader.default_rule and self._reuse_ended(reader.user_id):
            return self._open_on_reused(cur, kind, exec_id, cursor, reader)
        outcome: tuple[Execution | None, bool] = (None, False)
        with self._lock:  # the user's streams here that ended and wait to be given back go back with it
            returned = self._ended.pop(reader.user_id, 0)

        def lookup() -> bool:
            nonlocal outcome
            outcome = open_stream(cur, kind, exec_id, cursor, reader, self.worker_id, limit, self._stale_s, returned)
            return outcome[1]

        try:
            self._counted(reader.user_id, lookup)
        finally:
            # Given back, unless the statement failed; then the next round writes the true count.
            self._release({reader.user_id: returned} if returned else {})
        return outcome

    def take_over(self, user_id: str) -> bool:
        """Hold, for a new stream, a slot of ``user_id`` that ended here and waits to go back; whether
        there was one. The database counts it still: no statement at all."""
        if not self._reuse_ended(user_id):
            return False
        self.open += 1
        return True

    def _reuse_ended(self, user_id: str) -> bool:
        """Take one of ``user_id``'s ended slots that wait to go back, if there is one."""
        with self._lock:
            waiting = self._ended.get(user_id, 0)
            if waiting == 0:
                return False
            if waiting == 1:
                del self._ended[user_id]
            else:
                self._ended[user_id] = waiting - 1
            return True

    def _open_on_reused(
        self, cur: Cursor, kind: str, exec_id: str, cursor: int, reader: Reader
    ) -> tuple[Execution | None, bool]:
        """:meth:`take_on_open` on a reused slot: a read only; the slot waits to go back again unless
        the stream runs."""
        runs = False
        try:
            execution, _ = open_stream(cur, kind, exec_id, cursor, reader, self.worker_id, 0, self._stale_s, take=False)
            runs = execution is not None and reader.runs(execution, cursor)
        finally:
            if runs:
                self.open += 1
            else:
                self._ended_slot(reader.user_id)
        return execution, runs

    @property
    def _stale_s(self) -> float:
        return stale_after(self.refresh_s)

    def _counted(self, user_id: str, taken: Callable[[], bool]) -> bool:
        """Run ``taken`` (a slot write that says whether it took one) with the slot counted here first
        and forgotten last, so a maintenance round running meanwhile errs on the side of one stream
        too many, never too few."""
        self._hold(user_id)
        try:
            ok = taken()
        except BaseException:
            self._release({user_id: 1})
            raise
        if ok:
            self.open += 1
        else:
            self._release({user_id: 1})
        return ok

    @staticmethod
    def refuse(limit: int) -> TooManyStreams:
        """The 429 for a user who holds ``limit`` streams already, counted as refused."""
        counters.stream_refused("user_limit")
        # Retry-After 1: a stream the user closes gives its slot back within GIVE_BACK_DELAY_S (SPEC §5).
        return TooManyStreams(f"you have {limit} streams open; close one or retry later", retry_after=1)

    def give_back(self, user_id: str, *, at_once: bool = False) -> None:
        """A stream of ``user_id`` ended: its slot is free here now, and for every worker within
        :data:`GIVE_BACK_DELAY_S`, or before this returns when ``at_once`` (SPEC §5).

        The streams that end within that moment go to the database together, in one
        statement: a thousand streams ending at once (their executions completed) are a few
        statements, not a thousand round trips, each a write of the same row that the next
        connect of that user waits behind (issue 10). A refused client honours ``Retry-After``
        (≥ 1 s), by which time the slot is back everywhere; a new stream of the user on this
        worker takes it over, or gives it back first in its own round trip (:meth:`take_on_open`).
        Streams that end while a give-back is on its way go in the next one. ``at_once`` is for a worker
        that is shutting down and may be gone before the moment is over; a caller outside the
        gevent loop's greenlets (a sync or threaded worker) gives back at once too, since
        nothing may run the loop, and the batch with it, until its next stream.
        """
        self.open -= 1
        self._ended_slot(user_id, at_once=at_once)

    def _ended_slot(self, user_id: str, *, at_once: bool = False) -> None:
        """A slot of ``user_id`` that no stream holds now goes back, later or at once (:meth:`give_back`)."""
        at_once = at_once or gevent.getcurrent().parent is None
        with self._lock:
            self._ended[user_id] += 1
            if not at_once:
                if not self._flush_due:
                    self._flush_due = True
                    gevent.spawn_later(GIVE_BACK_DELAY_S, self._flush_later)
                return
            if self._giving_back:
                return  # the give-back under way takes this one next
            self._giving_back = True
        self._write_ended()

    def _flush_later(self) -> None:
        with self._lock:
            self._flush_due = False
            if self._giving_back or not self._ended:
                return  # one under way takes them, or one took them already
            self._giving_back = True
        self._write_ended()

    def _write_ended(self) -> None:
        """Write what has ended until nothing is left; the caller set ``_giving_back``."""
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
                sync(cur, self.worker_id, dict(self._held), self._stale_s)
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
