"""Executions and events SQL: the execution rows, their lock, event reads, NOTIFY payloads (SPEC §3).

Every function takes a cursor first and never commits: the caller owns the
transaction, so a host app can commit its own state and an event atomically.
The wake-up payload is written (:func:`wake_payload`) and read
(:func:`parse_wake`) here only.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from psycopg2.extras import Json

from .errors import Conflict
from .replay import frames_after as frames_after  # the replay read lives in its own module

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import cursor as Cursor

#: The one channel every worker's listener LISTENs on; payload ``exec_id:last_id``.
CHANNEL = "streamapp_events"
#: The wake-up payload (SPEC §3): one format for Python's ``%`` and SQL's ``format()``, so the
#: payload built in the database (``appends.append_known``) is the one :func:`wake_payload` builds.
WAKE_FORMAT = "%s:%s"


def wake_payload(exec_id: str, last_id: int) -> str:
    """The ``NOTIFY`` payload that wakes the streams of ``exec_id``: its id and new last id, never event data."""
    return WAKE_FORMAT % (exec_id, last_id)


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


def execution_from_row(row: tuple[t.Any, ...]) -> Execution:
    """An execution from its columns in the order every query here selects them."""
    return t.cast(Execution, dict(zip(_COLUMN_NAMES, row, strict=True)))


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What never changes of an execution once it exists: its kind, its owner, how its text streams."""

    kind: str
    owner_id: str
    text_mode: bool


def facts_of(execution: Execution) -> Facts:
    """The facts of an execution's row; text streams as text without an output schema (SPEC §5.2)."""
    kind = execution["kind"]
    return Facts(kind, execution["owner_id"], kind != "workflow" and execution["output_schema"] is None)


def ended_at(execution: Execution, cursor: int) -> bool:
    """Whether a stream from ``cursor`` has nothing left to send: the execution ended at or before it."""
    terminal_id = execution["terminal_event_id"]
    return terminal_id is not None and cursor >= terminal_id


def _row(row: tuple[t.Any, ...] | None) -> Execution | None:
    return None if row is None else execution_from_row(row)


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


_SELECT_EXECUTIONS = f"""
SELECT {_EXECUTION_COLUMNS} FROM executions WHERE exec_id = ANY(%(exec_ids)s)
"""


def get_executions(cur: Cursor, exec_ids: Sequence[str]) -> dict[str, Execution]:
    """The executions of ``exec_ids`` that exist, by id, in one query (multiplexed streams, SPEC §5.6)."""
    cur.execute(_SELECT_EXECUTIONS, {"exec_ids": list(exec_ids)})
    return {row["exec_id"]: row for row in map(execution_from_row, cur.fetchall())}


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


def begin_and_lock(cur: Cursor, kind: str | None, exec_id: str) -> Execution | None:
    """On an autocommit cursor: open a transaction and lock the execution, in one round trip.

    The caller ends it with :func:`commit_events` or ``ROLLBACK``.
    """
    cur.execute("BEGIN; " + _SELECT_EXECUTION + " FOR UPDATE", {"exec_id": exec_id, "kind": kind})
    return _row(cur.fetchone())


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
