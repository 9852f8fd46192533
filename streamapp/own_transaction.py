"""Appends in a transaction of streamapp's own: the data commit, then the wake-up (SPEC §3, issue 4).

The data commit carries no ``NOTIFY``; the wake-up follows it in the same round
trip, in a transaction of its own that does not wait for a WAL flush.
PostgreSQL serializes the commits of notifying transactions on one
database-wide lock; keeping the data commit (and its flush) out from under it
is what keeps appends/s near the no-NOTIFY bound. A wake-up lost in between is
covered by every worker's batched safety check within ``poll_ms``.

Two paths: an execution this worker has appended to before takes one round
trip (:func:`append_known`); any other is locked first (:func:`locked`, then
:meth:`Locked.commit`): two round trips in all.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import typing as t

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from . import appends
from . import counters
from . import storage
from .batches import AppendResult
from .errors import NotFound

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor

    from .batches import Rendered
    from .batches import Tails
    from .db import Database
    from .storage import Execution

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Locked:
    """An execution's row, locked in a transaction of our own that :meth:`commit` ends."""

    conn: Connection
    cur: Cursor
    execution: Execution

    def commit(self, rendered: Rendered, *, notify: bool) -> AppendResult:
        """Store the rows, COMMIT, then (``notify``) wake the streams: one round trip."""
        try:
            appends.commit_events(self.cur, self.execution["exec_id"], rendered.append, notify_after=notify)
        except psycopg2.Error:
            if not _only_the_wake_up_failed(self.conn):
                raise  # failed before COMMIT: nothing is stored
        counters.APPENDS.inc(len(rendered.append.rows))  # committed: once per batch (SPEC §9)
        return rendered.result


@contextlib.contextmanager
def locked(db: Database, kind: str | None, exec_id: str) -> Iterator[Locked]:
    """Open a transaction and lock the execution's row, in one round trip; leaving without
    :meth:`Locked.commit` rolls it back.

    :raises NotFound: unknown execution (of ``kind``, when given).
    """
    with db.connection() as conn, _session(conn), conn.cursor() as cur:
        execution = storage.begin_and_lock(cur, kind, exec_id)
        if execution is None:
            raise NotFound()
        yield Locked(conn, cur, execution)


def append_known(db: Database, exec_id: str, batch: Tails, *, notify: bool) -> AppendResult | None:
    """Store, commit and wake in one round trip; ``None`` when nothing was written (it has ended)."""
    with db.connection() as conn, _session(conn), conn.cursor() as cur:
        try:
            outcome = appends.append_known(
                cur,
                exec_id,
                batch.tails,
                batch.ts,
                status=batch.status,
                terminal_offset=batch.terminal_offset,
                notify=notify,
            )
        except psycopg2.Error:
            if not _only_the_wake_up_failed(conn):
                raise  # failed before COMMIT: nothing is stored
            outcome = appends.last_append(cur)
    if outcome is None:
        return None
    before, status = outcome
    counters.APPENDS.inc(len(batch.tails))
    return AppendResult(before + 1, before + len(batch.tails), status)


def _only_the_wake_up_failed(conn: Connection) -> bool:
    """After an error from a statement that commits and then wakes: whether the COMMIT went through.

    Only the wake-up can fail after it, and then the connection is idle, not
    inside a failed transaction block. The safety check delivers within ``poll_ms``.
    """
    if conn.closed or conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
        return False
    log.warning("NOTIFY after an append failed; streams catch up by the safety check")
    return True


@contextlib.contextmanager
def _session(conn: Connection) -> Iterator[None]:
    """Autocommit while we send BEGIN and COMMIT ourselves, each with other work; clean up after."""
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
            with contextlib.suppress(psycopg2.Error):
                conn.cursor().execute("ROLLBACK")
        if not conn.closed:
            conn.autocommit = False


class KnownExecutions:
    """What never changes about the executions this worker appended to lately (kind, owner, schema).

    Ended executions are known too: their next append takes the locking path and gets its 409.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._rows: collections.OrderedDict[str, Execution] = collections.OrderedDict()

    def get(self, exec_id: str) -> Execution | None:
        return self._rows.get(exec_id)

    def remember(self, execution: Execution) -> None:
        # The changing fields are blanked so nothing can read them as current.
        blanked = {**execution, "status": None, "last_event_id": None, "terminal_event_id": None, "last_sequence": 0}
        self._rows[execution["exec_id"]] = t.cast("Execution", blanked)
        self._rows.move_to_end(execution["exec_id"])
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
