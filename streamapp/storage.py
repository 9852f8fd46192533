"""Executions and events SQL: gap-free per-execution ids, NOTIFY payloads (SPEC §3).

Every function takes a cursor first and never commits: the caller owns the
transaction, so a host app can commit its own state and an event atomically.
The wake-up payload is written (:func:`wake_payload`) and read
(:func:`parse_wake`) here only.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

import psycopg2.extensions
import psycopg2.extras
from psycopg2.extras import Json

from .errors import Conflict
from .replay import frames_after as frames_after  # the replay read lives in its own module

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

#: The one channel every worker's listener LISTENs on; payload ``exec_id:last_id``.
CHANNEL = "streamapp_events"
#: The wake-up payload (SPEC §3): one format for Python's ``%`` and SQL's ``format()``, so the
#: payload built in the database (:data:`_APPEND_KNOWN`) is the one :func:`wake_payload` builds.
_WAKE_FORMAT = "%s:%s"


def wake_payload(exec_id: str, last_id: int) -> str:
    """The ``NOTIFY`` payload that wakes the streams of ``exec_id``: its id and new last id, never event data."""
    return _WAKE_FORMAT % (exec_id, last_id)


def parse_wake(payload: str) -> tuple[str, int] | None:
    """``(exec_id, last_id)`` of a wake-up payload; ``None`` for anything else on the channel."""
    exec_id, _, last = payload.rpartition(":")
    # ASCII digits only: str.isdigit() takes "²", which int() refuses.
    if not (last.isascii() and last.isdigit()):
        return None
    return exec_id, int(last)


def async_commit(sql: str) -> str:
    """``sql``, run in a transaction that commits without waiting for its WAL flush.

    For what is never stored or is stored already: wake-ups, text chunks,
    stream counts. A crash may lose it; the safety check and the next
    maintenance round cover that (SPEC §3). Only for transactions streamapp
    owns: it would make a caller's own commit asynchronous too.
    """
    return "SET LOCAL synchronous_commit TO off;\n" + sql


_WAKE = "SELECT pg_notify(%(channel)s, %(payload)s)"
#: The wake-up of an append whose commit is ours, sent after that commit (issue 4).
_WAKE_AFTER_COMMIT = async_commit(_WAKE)

_EXECUTION_COLUMNS = """
    exec_id, kind, name, status, input, output_schema, owner_id, last_event_id,
    last_sequence, terminal_event_id, created_at
"""
_COLUMN_NAMES = [c.strip() for c in _EXECUTION_COLUMNS.split(",")]


class Execution(t.TypedDict):
    """An execution's row, as every layer reads it.

    A dict rather than a class: ``authorize(user, execution)`` hands it to host
    code, which indexes it (docs/integration.md); the type lets mypy check ours.
    """

    exec_id: str
    kind: str
    name: str
    status: str
    input: t.Any
    output_schema: dict[str, t.Any] | bool | None
    owner_id: str
    last_event_id: int
    last_sequence: int
    terminal_event_id: int | None
    created_at: datetime.datetime


# An exec_id in use inserts nothing and returns no row: no unique violation fails in the
# database, so the statement, with the execution's input, never reaches its log (SPEC §2).
_INSERT_EXECUTION = f"""
INSERT INTO executions (exec_id, kind, name, input, output_schema, owner_id)
VALUES (%(exec_id)s, %(kind)s, %(name)s, %(input)s, %(output_schema)s, %(owner_id)s)
ON CONFLICT (exec_id) DO NOTHING
RETURNING {_EXECUTION_COLUMNS}
"""


def _row(row: tuple[t.Any, ...] | None) -> Execution | None:
    return None if row is None else t.cast(Execution, dict(zip(_COLUMN_NAMES, row, strict=True)))


def insert_execution(
    cur: Cursor,
    *,
    exec_id: str,
    kind: str,
    name: str,
    owner_id: str,
    input: t.Any = None,
    output_schema: dict[str, t.Any] | bool | None = None,
) -> Execution:
    """Create an execution.

    :raises Conflict: if ``exec_id`` is already in use.
    """
    cur.execute(
        _INSERT_EXECUTION,
        {
            "exec_id": exec_id,
            "kind": kind,
            "name": name,
            "input": None if input is None else Json(input),
            "output_schema": None if output_schema is None else Json(output_schema),
            "owner_id": owner_id,
        },
    )
    row = _row(cur.fetchone())
    if row is None:
        raise Conflict(f"exec_id {exec_id!r} is already in use")
    return row


_SELECT_EXECUTION = f"""
SELECT {_EXECUTION_COLUMNS} FROM executions
WHERE exec_id = %(exec_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)
"""


def get_execution(cur: Cursor, kind: str | None, exec_id: str, *, lock: bool = False) -> Execution | None:
    """One execution (of this kind, unless ``None``) or ``None``; ``lock`` takes its row lock."""
    cur.execute(_SELECT_EXECUTION + (" FOR UPDATE" if lock else ""), {"exec_id": exec_id, "kind": kind})
    return _row(cur.fetchone())


_LIST_EXECUTIONS = f"""
SELECT {_EXECUTION_COLUMNS} FROM executions
WHERE kind = %(kind)s
  AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s)
  AND (%(after_ts)s::timestamptz IS NULL OR (created_at, exec_id) < (%(after_ts)s, %(after_id)s))
ORDER BY created_at DESC, exec_id DESC
LIMIT %(limit)s
"""


def list_executions(
    cur: Cursor,
    kind: str,
    *,
    owner_id: str | None,
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[Execution]:
    """Executions newest first; ``owner_id=None`` lists everyone's; ``after`` is a keyset cursor."""
    after_ts, after_id = after if after else (None, None)
    cur.execute(
        _LIST_EXECUTIONS,
        {"kind": kind, "owner_id": owner_id, "after_ts": after_ts, "after_id": after_id, "limit": limit},
    )
    return [t.cast(Execution, _row(r)) for r in cur.fetchall()]


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


def begin_and_lock(cur: Cursor, kind: str | None, exec_id: str) -> Execution | None:
    """On an autocommit cursor: open a transaction and lock the execution, in one round trip.

    The caller ends it with :func:`commit_events` or ``ROLLBACK``.
    """
    cur.execute("BEGIN; " + _SELECT_EXECUTION + " FOR UPDATE", {"exec_id": exec_id, "kind": kind})
    return _row(cur.fetchone())


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
        wake = {"channel": CHANNEL, "payload": wake_payload(exec_id, append.rows[-1][0])}
        sql += b"\n" + cur.mogrify(_WAKE_AFTER_COMMIT, wake)
    cur.execute(sql)


# One round trip for an append to an execution the producer already knows (issue 10): the
# row's own UPDATE takes the lock and hands the ids to the INSERT, so ids stay gap-free and in
# commit order; the envelope's id is spliced in front of its pre-rendered tail. No row comes
# back when the execution has ended (or is gone): then nothing was written, and the caller
# takes the locking path to say why. The outcome outlives the data transaction in a session
# setting, so the wake-up's own transaction, after COMMIT, can name the new last id and
# return it in the same round trip (the notify lock is never held through the data's flush).
_APPEND_KNOWN = """
SELECT set_config('streamapp.append', '', false);
BEGIN;
WITH bumped AS (
    UPDATE executions
    SET last_event_id = last_event_id + %(count)s,
        status = COALESCE(%(status)s, status),
        terminal_event_id = last_event_id + %(terminal_offset)s,
        updated_at = clock_timestamp()
    WHERE exec_id = %(exec_id)s AND terminal_event_id IS NULL
    RETURNING last_event_id - %(count)s AS before, status
), stored AS (
    INSERT INTO events (exec_id, id, type, created_at, envelope)
    SELECT %(exec_id)s, b.before + e.n, e.type, %(ts)s, '{"id":' || (b.before + e.n) || e.tail
    FROM bumped b, unnest(%(types)s::text[], %(tails)s::text[]) WITH ORDINALITY AS e(type, tail, n)
)
SELECT set_config('streamapp.append', b.before || ':' || b.status, false) FROM bumped b;
COMMIT;
""" + async_commit("""
SELECT current_setting('streamapp.append'),
       CASE WHEN %(notify)s AND current_setting('streamapp.append') <> '' THEN pg_notify(
           %(channel)s,
           format(%(wake_format)s, %(exec_id)s,
                  split_part(current_setting('streamapp.append'), ':', 1)::bigint + %(count)s)
       ) END
""")


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
            "channel": CHANNEL,
            "wake_format": _WAKE_FORMAT,
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
    cur.execute(_WAKE, {"channel": CHANNEL, "payload": wake_payload(exec_id, last_id)})


_SELECT_OLDEST = "SELECT min(id) FROM events WHERE exec_id = %(exec_id)s"


def oldest_event_id(cur: Cursor, exec_id: str) -> int | None:
    """The oldest id still held for ``exec_id`` (``None`` without events); retention may have moved it."""
    cur.execute(_SELECT_OLDEST, {"exec_id": exec_id})
    row = cur.fetchone()
    return None if row is None else t.cast("int | None", row[0])


_SELECT_LAST_IDS = """
SELECT exec_id, last_event_id FROM executions WHERE exec_id = ANY(%(exec_ids)s)
"""


def last_event_ids(cur: Cursor, exec_ids: list[str]) -> dict[str, int]:
    """The newest id of each execution, in one query (the hub's safety check)."""
    cur.execute(_SELECT_LAST_IDS, {"exec_ids": exec_ids})
    return dict(cur.fetchall())
