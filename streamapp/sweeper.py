"""Abandoned executions: end those with no durable event for too long (SPEC §2, issue 13).

With ``STREAMAPP_EXECUTION_TIMEOUT_S`` set, every worker's hub runs
:func:`run_forever`; each round one worker at a time (a transaction-level
advisory lock, so across hosts too) ends every execution whose last event,
or creation when it has none, is older than the timeout with one ``error``
``{status: "TIMED_OUT", error: {code: "timed_out", …}}``. Exactly one: the
rows are locked ``FOR UPDATE SKIP LOCKED`` and the condition is re-read on
the locked row (PostgreSQL re-evaluates it for a row updated meanwhile), an
append that holds the row is skipped rather than waited for, and the terminal
check of the append itself refuses a second terminal event. The event goes
through the producer's in-transaction append, so its ``NOTIFY`` wakes every
stream as any other append does.

The SQL lives here rather than in ``storage.py``: it is this job's alone,
and the storage module is the append path's.
"""

from __future__ import annotations

import logging
import typing as t

from . import background
from . import producer

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

#: Executions ended per transaction: short transactions, few row locks held at once.
BATCH = 100
#: Any fixed number shared by every process that sweeps this database ("SWEP").
_LOCK_KEY = 0x53574550
TIMED_OUT_CODE = "timed_out"

_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"

# created_at is indexed for open executions (migrations/0005) and never moves;
# updated_at >= created_at, so the first bound narrows the scan and the second decides.
# now() (this transaction's start, a moment ago) rather than clock_timestamp(): an
# index condition cannot use a volatile function.
_SELECT_IDLE = """
SELECT exec_id FROM executions
WHERE terminal_event_id IS NULL
  AND created_at < now() - make_interval(secs => %(timeout_s)s)
  AND updated_at < now() - make_interval(secs => %(timeout_s)s)
ORDER BY created_at
LIMIT %(batch)s
FOR UPDATE SKIP LOCKED
"""


def interval_s(timeout_s: float) -> float:
    """How often a worker sweeps: a quarter of the timeout, between 0.25 s and 5 s.

    An abandoned execution ends within about this long after its deadline.
    """
    return min(5.0, max(0.25, timeout_s / 4))


def _timed_out(timeout_s: float) -> dict[str, t.Any]:
    message = f"no event for {timeout_s:g} s (STREAMAPP_EXECUTION_TIMEOUT_S)"
    return {"type": "error", "data": {"status": "TIMED_OUT", "error": {"message": message, "code": TIMED_OUT_CODE}}}


def _sweep_batch(cur: Cursor, timeout_s: float, batch: int) -> list[str] | None:
    """End up to ``batch`` idle executions in the caller's transaction; ``None`` if another sweeps."""
    cur.execute(_TRY_LOCK, {"key": _LOCK_KEY})
    if not t.cast(tuple[bool], cur.fetchone())[0]:
        return None
    cur.execute(_SELECT_IDLE, {"timeout_s": timeout_s, "batch": batch})
    exec_ids = [row[0] for row in cur.fetchall()]
    for exec_id in exec_ids:
        # Our own words, not a producer's: nothing to redact.
        producer.append_events(cur, exec_id, [_timed_out(timeout_s)], redact=None)
    return exec_ids


def sweep(db: Database, timeout_s: float, *, batch: int = BATCH) -> list[str]:
    """End every execution with no durable event for ``timeout_s``; return the ids ended.

    One transaction per ``batch`` executions. Returns at once, having ended
    nothing, while another worker or host is sweeping.
    """
    ended: list[str] = []
    while True:
        with db.transaction() as cur:
            exec_ids = _sweep_batch(cur, timeout_s, batch)
        if exec_ids is None:
            return ended
        ended.extend(exec_ids)
        if len(exec_ids) < batch:
            return ended


def run_forever(db: Database, timeout_s: float) -> None:
    """Sweep every :func:`interval_s` until killed (:func:`background.repeat`)."""

    def one_round() -> None:
        ended = sweep(db, timeout_s)
        if ended:
            log.info("ended %d abandoned executions (TIMED_OUT)", len(ended))

    background.repeat(interval_s(timeout_s), one_round, "ending abandoned executions")
