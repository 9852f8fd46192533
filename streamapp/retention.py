"""Retention: delete the events of executions that ended long ago (SPEC §9, issue 13).

``flask --app app events prune --older-than 7d`` and, with
``STREAMAPP_RETENTION_S`` set, :func:`run_forever` in every worker's hub (one
worker at a time across hosts, under a session advisory lock).

Appends are never blocked: they lock an execution row and insert into its
events, and prune touches only executions that have ended, which no append
can touch again (nothing follows a terminal event, SPEC §2). Deletes go
oldest id first, in transactions of at most ``batch_size`` events, so a prune
holds no lock for long and a stream that meets a half-pruned execution still
gets the ``stream_reset`` / replay-from-the-oldest rule of SPEC §5.5. An
execution whose events are all gone gets ``pruned_at``, so the next run
skips it; its row (status, ``last_event_id``, document) stays.

The SQL lives here rather than in ``storage.py``: it is this job's alone,
and the storage module is the append path's.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing as t

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from . import background
from .db import transaction_on

if t.TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection

    from .db import Database

log = logging.getLogger(__name__)

#: Events deleted per transaction by default.
BATCH_SIZE = 1000
#: Ended executions looked at per transaction.
_CANDIDATES = 100
#: Any fixed number shared by every process that prunes this database ("PRUN").
_LOCK_KEY = 0x5052554E
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"([0-9]{1,9})([smhd])")
#: Longer ages would overflow PostgreSQL's timestamps; nobody keeps events for a century.
MAX_AGE_S = 100 * 365 * 86400


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What one prune removed: executions emptied of events, and events deleted."""

    executions: int = 0
    events: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.executions + other.executions, self.events + other.events)


def parse_age(text: str) -> int:
    """Seconds in an age written ``Ns``, ``Nm``, ``Nh`` or ``Nd`` (``7d``); N ≥ 1.

    :raises ValueError: for anything else.
    """
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise ValueError("must be a whole number followed by s, m, h or d, like 7d or 12h")
    seconds = int(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= MAX_AGE_S:
        raise ValueError("must be at least 1s and at most 100 years")
    return seconds


_CUTOFF = "SELECT clock_timestamp() - make_interval(secs => %(older_than_s)s)"

# The partial index executions_prunable (migrations/0005) holds exactly the
# ended executions not yet emptied. updated_at is when the terminal event was
# appended (nothing moves it afterwards); created_at <= updated_at bounds the scan.
_SELECT_ENDED = """
SELECT exec_id FROM executions
WHERE terminal_event_id IS NOT NULL AND pruned_at IS NULL
  AND created_at < %(cutoff)s AND updated_at < %(cutoff)s
ORDER BY created_at, exec_id
LIMIT %(limit)s
"""

# One execution's oldest events, at most %(limit)s of them, by the primary key's
# order; the execution is marked pruned in the same statement once none is left.
_DELETE_OLDEST = """
WITH gone AS (
    DELETE FROM events
    WHERE exec_id = %(exec_id)s
      AND id IN (SELECT id FROM events WHERE exec_id = %(exec_id)s ORDER BY id LIMIT %(limit)s)
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM gone
), marked AS (
    UPDATE executions SET pruned_at = clock_timestamp()
    WHERE exec_id = %(exec_id)s AND (SELECT n FROM counted) < %(limit)s
    RETURNING 1
)
SELECT (SELECT n FROM counted), (SELECT count(*) FROM marked)
"""


def _prune_batch(conn: Connection, cutoff: t.Any, batch_size: int) -> tuple[Pruned, bool]:
    """One short transaction: up to ``batch_size`` events; the tally and whether work is left."""
    budget = batch_size
    executions = 0
    with transaction_on(conn) as cur:
        cur.execute(_SELECT_ENDED, {"cutoff": cutoff, "limit": _CANDIDATES})
        exec_ids = [row[0] for row in cur.fetchall()]
        for exec_id in exec_ids:
            cur.execute(_DELETE_OLDEST, {"exec_id": exec_id, "limit": budget})
            deleted, marked = t.cast(tuple[int, int], cur.fetchone())
            budget -= deleted
            executions += marked
            if not marked:
                break  # the budget ran out inside this execution: the next batch goes on with it
    return Pruned(executions, batch_size - budget), bool(exec_ids)


def prune(db: Database, older_than_s: float, *, batch_size: int = BATCH_SIZE) -> Pruned:
    """Delete the events of executions that ended more than ``older_than_s`` ago.

    Runs on one pooled connection, one short transaction per ``batch_size``
    events, until nothing is left; executions that end meanwhile wait for the
    next run (the cutoff is fixed at the start). Two runs at once are safe,
    only wasteful: a delete is idempotent.

    :raises DatabaseUnavailable: PostgreSQL is away (what was committed stays pruned).
    """
    with db.connection() as conn:
        return _prune_on(conn, older_than_s, batch_size)


def prune_exclusively(db: Database, older_than_s: float, *, batch_size: int = BATCH_SIZE) -> Pruned | None:
    """:func:`prune`, unless another process holds the retention lock (then ``None`` at once).

    A session advisory lock: one worker at a time across every host on this database.
    """
    with db.connection() as conn:
        if not _try_lock(conn):
            return None
        try:
            return _prune_on(conn, older_than_s, batch_size)
        finally:
            _unlock(conn)


def _prune_on(conn: Connection, older_than_s: float, batch_size: int) -> Pruned:
    with transaction_on(conn) as cur:
        cur.execute(_CUTOFF, {"older_than_s": older_than_s})
        cutoff = t.cast(tuple[t.Any], cur.fetchone())[0]
    total = Pruned()
    more = True
    while more:
        pruned, more = _prune_batch(conn, cutoff, batch_size)
        total += pruned
    return total


def _try_lock(conn: Connection) -> bool:
    with transaction_on(conn) as cur:
        cur.execute("SELECT pg_try_advisory_lock(%(key)s)", {"key": _LOCK_KEY})
        return bool(t.cast(tuple[bool], cur.fetchone())[0])


def _unlock(conn: Connection) -> None:
    """Release the retention lock before the connection goes back to the pool.

    A session lock outlives transactions. When it cannot be released here
    (the run was interrupted mid-statement), the connection is closed
    instead, which releases it on the server.
    """
    if conn.closed:
        return
    try:
        if conn.info.transaction_status == TRANSACTION_STATUS_IDLE:
            with transaction_on(conn) as cur:
                cur.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": _LOCK_KEY})
            return
    except psycopg2.Error:
        pass  # closed below
    conn.close()


def interval_s(retention_s: float) -> float:
    """How often a worker tries to prune: a tenth of the retention, between 1 s and 10 minutes."""
    return min(600.0, max(1.0, retention_s / 10))


def run_forever(db: Database, retention_s: float) -> None:
    """Prune every :func:`interval_s` under the retention lock, until killed (:func:`background.repeat`)."""

    def one_round() -> None:
        pruned = prune_exclusively(db, retention_s)
        if pruned is not None and (pruned.events or pruned.executions):
            log.info("pruned %d events of %d ended executions", pruned.events, pruned.executions)

    background.repeat(interval_s(retention_s), one_round, "pruning old events")
