"""Appending events: gap-free per-execution ids under the execution's row, commit and wake-up (SPEC §3, §8).

Like :mod:`storage`, every function takes a cursor first; the caller owns the
transaction, except where a function says it commits (the producer's
own-transaction mode, :mod:`own_transaction`).
"""

from __future__ import annotations

import dataclasses
import typing as t

import psycopg2.extras

from . import storage

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

_WAKE = "SELECT pg_notify(%(channel)s, %(payload)s)"
#: The wake-up of an append whose commit is ours, sent after that commit (issue 4).
_WAKE_AFTER_COMMIT = storage.async_commit(_WAKE)

_BUMP_COUNTER = """
UPDATE executions
SET last_event_id = last_event_id + %(count)s,
    status = COALESCE(%(status)s, status),
    last_sequence = GREATEST(last_sequence, %(last_sequence)s),
    terminal_event_id = COALESCE(%(terminal_event_id)s, terminal_event_id),
    updated_at = clock_timestamp()
WHERE exec_id = %(exec_id)s
"""
_INSERT_EVENTS = "INSERT INTO events (exec_id, id, type, created_at, envelope) VALUES %s"


@dataclasses.dataclass(frozen=True)
class Append:
    """What one append writes: rendered rows ``(id, type, ts, envelope)`` and the execution's new state."""

    rows: list[tuple[int, str, t.Any, str]]
    status: str | None
    last_sequence: int
    terminal_event_id: int | None

    def bump(self, exec_id: str) -> dict[str, t.Any]:
        """The parameters of :data:`_BUMP_COUNTER`."""
        return {
            "count": len(self.rows),
            "status": self.status,
            "last_sequence": self.last_sequence,
            "terminal_event_id": self.terminal_event_id,
            "exec_id": exec_id,
        }


def insert_events(cur: Cursor, exec_id: str, append: Append) -> None:
    """Store rendered events and move the execution's counter.

    The caller holds the execution's row lock (``get_execution(lock=True)``)
    and chose the ids as ``last_event_id + 1 …``; the lock is what keeps ids
    gap-free and in commit order across concurrent producers.
    """
    cur.execute(_BUMP_COUNTER, append.bump(exec_id))
    psycopg2.extras.execute_values(cur, _INSERT_EVENTS, [(exec_id, *row) for row in append.rows], page_size=1000)


def commit_events(cur: Cursor, exec_id: str, append: Append, *, notify_after: bool) -> None:
    """Store events, move the counter and COMMIT the transaction :func:`begin_and_lock` opened,
    then (``notify_after``) send the wake-up in a second, implicit transaction: one round trip.

    The wake-up's transaction does not wait for a WAL flush, so PostgreSQL's
    database-wide notify lock is held for microseconds, never through the
    data commit's flush (issue 4). If only that second part fails, the
    connection is idle afterwards, not inside the failed transaction block;
    that is how the caller tells "stored" from "not stored".
    """
    bump = cur.mogrify(_BUMP_COUNTER, append.bump(exec_id))
    values = b",".join(cur.mogrify("(%s,%s,%s,%s,%s)", (exec_id, *row)) for row in append.rows)
    sql = bump + b";\n" + _INSERT_EVENTS.encode().replace(b"%s", values) + b";\nCOMMIT;"
    if notify_after:
        wake = {"channel": storage.CHANNEL, "payload": storage.wake_payload(exec_id, append.rows[-1][0])}
        sql += b"\n" + cur.mogrify(_WAKE_AFTER_COMMIT, wake)
    cur.execute(sql)


# One round trip for an append to an execution the producer already knows (issue 10):
# streamapp_append (migration 0007) stores the events under the row's own UPDATE, so ids
# stay gap-free and in commit order; no row is written when the execution has ended (or is
# gone), and the caller takes the locking path to say why. Its outcome outlives the data
# transaction in a session setting, so the wake-up's own transaction, after COMMIT, can name
# the new last id and return it in the same round trip (the notify lock is never held
# through the data's flush). Functions, because their plans are kept per connection: parsed
# and planned per call, this text cost PostgreSQL more than running it.
_APPEND_KNOWN = """
SELECT set_config('streamapp.append', '', false);
BEGIN;
SELECT streamapp_append(%(exec_id)s, %(count)s, %(status)s, %(terminal_offset)s, %(ts)s, %(types)s, %(tails)s);
COMMIT;
""" + storage.async_commit(
    "SELECT streamapp_wake_after_append(%(notify)s, %(channel)s, %(wake_format)s, %(exec_id)s, %(count)s)"
)


def append_known(
    cur: Cursor,
    exec_id: str,
    tails: list[tuple[str, str]],
    ts: str,
    *,
    status: str | None,
    terminal_offset: int | None,
    notify: bool,
) -> tuple[int, str] | None:
    """On an autocommit cursor: store ``(type, envelope tail)`` rows, commit, then wake, in one round trip.

    ``terminal_offset`` is the 1-based place of a terminal event in the batch.
    Returns the id before the first new one and the execution's status, or
    ``None`` when nothing was written (ended or unknown execution).
    """
    cur.execute(
        _APPEND_KNOWN,
        {
            "exec_id": exec_id,
            "count": len(tails),
            "status": status,
            "terminal_offset": terminal_offset,
            "ts": ts,
            "types": [type_name for type_name, _ in tails],
            "tails": [tail for _, tail in tails],
            "notify": notify,
            "channel": storage.CHANNEL,
            "wake_format": storage.WAKE_FORMAT,
        },
    )
    return _outcome(cur.fetchone())


def last_append(cur: Cursor) -> tuple[int, str] | None:
    """What :func:`append_known` stored on this connection, when only its wake-up failed."""
    cur.execute("SELECT current_setting('streamapp.append', true)")
    return _outcome(cur.fetchone())


def _outcome(row: tuple[t.Any, ...] | None) -> tuple[int, str] | None:
    if row is None or not row[0]:
        return None
    before, _, status = row[0].partition(":")
    return int(before), status


def notify(cur: Cursor, exec_id: str, last_id: int) -> None:
    """Wake the streams of ``exec_id``; delivered when the caller's transaction commits (SPEC §3)."""
    cur.execute(_WAKE, {"channel": storage.CHANNEL, "payload": storage.wake_payload(exec_id, last_id)})
