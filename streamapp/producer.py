"""The producer API: create executions and append durable events (SPEC §2, §3).

Two ways to append:

* ``append_events(cur, exec_id, events)`` inside the caller's own psycopg2
  transaction: the host commits its own state and the events atomically; the
  ``NOTIFY`` is sent in that transaction (SPEC §3).
* ``Producer(db).append_events(exec_id, events)`` in a transaction of our own:
  the data commit carries no ``NOTIFY``; the wake-up follows it in the same
  round trip, in a transaction of its own with ``synchronous_commit`` off
  (BEGIN + lock, then insert + COMMIT + NOTIFY: two round trips in all).
  PostgreSQL serializes the commits of notifying transactions on one
  database-wide lock; keeping the data commit (and its WAL flush) out from
  under it is what keeps appends/s near the no-NOTIFY bound (issue 4). A
  wake-up lost in between is covered by every worker's batched safety check
  within ``poll_ms``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import typing as t
from collections.abc import Callable
from collections.abc import Sequence

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from . import catalog
from . import counters
from . import nesting
from . import redact as redaction
from . import storage
from .errors import Conflict
from .errors import Invalid
from .errors import NotFound
from .errors import TooLarge
from .exec_ids import EXEC_ID_PATTERN
from .exec_ids import EXEC_ID_RULE
from .exec_ids import new_exec_id
from .output_schema import check_schema
from .output_schema import check_value

if t.TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENT_BYTES = 256 * 1024
DEFAULT_MAX_JSON_DEPTH = nesting.DEFAULT_MAX_DEPTH
Redactor = Callable[[t.Any], t.Any]
#: Secrets are redacted before storage unless a caller passes another redactor (SPEC §7).
DEFAULT_REDACTOR: Redactor = redaction.Redactor()


@dataclasses.dataclass(frozen=True)
class AppendResult:
    first_id: int
    last_id: int
    status: str


def create_execution(
    cur: Cursor,
    kind: str,
    name: str,
    owner_id: str,
    *,
    exec_id: str | None = None,
    input: t.Any = None,
    output_schema: dict[str, t.Any] | bool | None = None,
    redact: Redactor | None = DEFAULT_REDACTOR,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> dict[str, t.Any]:
    """Create an execution inside the caller's transaction; return its row.

    ``input`` is shown in the execution document, so it is redacted as event
    data is (SPEC §7); ``redact=None`` stores it as given.

    :raises Invalid: for a bad kind, exec_id or output schema, or an input or
        schema nested deeper than ``max_json_depth``.
    :raises Conflict: if ``exec_id`` is already in use.
    """
    if kind not in catalog.KINDS:
        raise Invalid(f"kind must be one of {', '.join(catalog.KINDS)}")
    if exec_id is not None and not EXEC_ID_PATTERN.fullmatch(exec_id):
        raise Invalid(f"exec_id {EXEC_ID_RULE}")
    # Before the schema check and the redactor, which recurse (issue 11).
    nesting.check_value(input, max_json_depth, "input")
    nesting.check_value(output_schema, max_json_depth, "output_schema")
    _check_storable(input, "input")
    _check_storable(output_schema, "output_schema")
    if output_schema is not None:
        check_schema(output_schema)
    if input is not None and redact is not None:
        input = redact(input)
    return storage.insert_execution(
        cur,
        exec_id=exec_id or new_exec_id(),
        kind=kind,
        name=name,
        owner_id=owner_id,
        input=input,
        output_schema=output_schema,
    )


def _check_storable(value: t.Any, where: str) -> None:
    """Refuse what PostgreSQL's jsonb cannot hold before the INSERT (:func:`nesting.unstorable`).

    :raises Invalid: naming ``where``.
    """
    if nesting.unstorable(value) is not None:
        raise Invalid(f"{where} holds U+0000 or a lone UTF-16 surrogate, which cannot be stored")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_batch(
    execution: dict[str, t.Any],
    events: Sequence[t.Any],
    max_event_bytes: int,
    redact: Redactor | None = None,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> tuple[list[tuple[str, dict[str, t.Any], str]], int]:
    """Validate a whole batch before anything is stored.

    Returns the redacted ``(type, data, data_json)`` of each event and the
    execution's ``structured_delta`` sequence after the batch.

    The catalog and the output schema judge what the producer sent (a schema
    describes the real output, not its redacted copy); what is stored and
    measured against the size limit is the redacted data.
    """
    if not events:
        raise Invalid("events must hold at least one event")
    checked = []
    terminal_seen = execution["terminal_event_id"] is not None
    sequence = execution["last_sequence"]
    schema = execution.get("output_schema")
    for index, event in enumerate(events):
        if terminal_seen:
            raise Conflict("the execution has ended: no event may follow complete or error")
        if not isinstance(event, dict) or set(event) - {"type", "data"} or "type" not in event:
            raise Invalid(f"events[{index}] must be an object with 'type' and 'data'")
        type_name, data = event["type"], event.get("data", {})
        # Before the catalog, the output schema and the redactor, which recurse (issue 11).
        nesting.check_value(data, max_json_depth, f"events[{index}].data")
        try:
            catalog.validate_event(
                execution["kind"], type_name, data, has_output_schema=schema is not None, last_sequence=sequence
            )
        except Invalid as exc:
            raise Invalid(f"events[{index}]: {exc.message}") from None
        spec = catalog.CATALOG.get(type_name)
        if spec is not None:
            for name in spec.schema_checked_fields:
                check_value(f"events[{index}]: {type_name}.data.{name}", schema, data, name)
            if spec.sequence_field:
                sequence = data[spec.sequence_field]
        if redact is not None:
            data = redact(data)
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        try:
            size = len(data_json.encode())
        except UnicodeEncodeError:
            raise Invalid(f"events[{index}].data holds a lone UTF-16 surrogate, which cannot be stored") from None
        if size > max_event_bytes:
            raise TooLarge(f"events[{index}].data is over {max_event_bytes} bytes")
        terminal_seen = type_name in catalog.TERMINAL_TYPES
        checked.append((type_name, data, data_json))
    return checked, sequence


def _envelope(event_id: int, type_name: str, ts: str, execution: dict[str, t.Any], data_json: str) -> str:
    return f'{{"id":{event_id:d}' + _envelope_tail(type_name, ts, execution, data_json)


def _envelope_tail(type_name: str, ts: str, execution: dict[str, t.Any], data_json: str) -> str:
    """The envelope after its ``{"id":N``; the known-execution path has the database put the id in front.

    Built by hand around the already-encoded data so it is encoded once.
    """
    head = json.dumps(
        {"type": type_name, "ts": ts, "exec_id": execution["exec_id"], "kind": execution["kind"]},
        separators=(",", ":"),
    )
    return "," + head[1:-1] + ',"data":' + data_json + "}"


@dataclasses.dataclass(frozen=True)
class _Prepared:
    append: storage.Append
    result: AppendResult


def _prepare(
    execution: dict[str, t.Any] | None,
    events: Sequence[t.Any],
    max_event_bytes: int,
    redact: Redactor | None,
    check: Callable[[dict[str, t.Any]], None] | None,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> _Prepared:
    """Check a batch against the locked execution and render its rows; nothing is stored yet."""
    if execution is None:
        raise NotFound()
    if check is not None:
        check(execution)
    checked, sequence = _check_batch(execution, events, max_event_bytes, redact, max_json_depth)
    first_id = execution["last_event_id"] + 1
    ts = _now()
    rows = []
    status = None
    terminal_id = None
    for offset, (type_name, data, data_json) in enumerate(checked):
        event_id = first_id + offset
        rows.append((event_id, type_name, ts, _envelope(event_id, type_name, ts, execution, data_json)))
        status = catalog.status_after(execution["kind"], type_name, data) or status
        if type_name in catalog.TERMINAL_TYPES:
            terminal_id = event_id
    result = AppendResult(first_id, first_id + len(rows) - 1, status or execution["status"])
    return _Prepared(storage.Append(rows, status, sequence, terminal_id), result)


def append_events(
    cur: Cursor,
    exec_id: str,
    events: Sequence[t.Any],
    *,
    kind: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> AppendResult:
    """Append a batch inside the caller's transaction, all or nothing; NOTIFY on its commit.

    :raises NotFound: unknown execution (of ``kind``, when given).
    :raises Conflict: after a terminal event.
    :raises Invalid: a type, data or sequence that breaks the catalog, or data nested
        deeper than ``max_json_depth`` (nothing stored).
    :raises TooLarge: an event's data over ``max_event_bytes``.
    """
    execution = storage.get_execution(cur, kind, exec_id, lock=True)
    return _append_locked(
        cur,
        execution,
        events,
        max_event_bytes=max_event_bytes,
        redact=redact,
        notify=notify,
        max_json_depth=max_json_depth,
    )


def _append_locked(
    cur: Cursor,
    execution: dict[str, t.Any] | None,
    events: Sequence[t.Any],
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> AppendResult:
    """:func:`append_events` on an execution whose row the caller has locked in ``cur``'s transaction."""
    prepared = _prepare(execution, events, max_event_bytes, redact, None, max_json_depth)
    exec_id = t.cast(dict[str, t.Any], execution)["exec_id"]
    storage.insert_events(cur, exec_id, prepared.append)
    if notify:
        storage.notify(cur, exec_id, prepared.result.last_id)
    # Counted as inserted: the caller's transaction commits them, or rolls them back (rare).
    counters.APPENDS.inc(len(prepared.append.rows))
    return prepared.result


def _cancel_event(reason: str | None) -> dict[str, t.Any]:
    if reason is not None and (not isinstance(reason, str) or not reason):
        raise Invalid("reason must be a non-empty string")
    return {
        "type": "error",
        "data": {"status": "CANCELED", "error": {"message": reason or "canceled", "code": "canceled"}},
    }


def _end(
    cur: Cursor,
    exec_id: str,
    event: dict[str, t.Any],
    *,
    kind: str | None,
    check: Callable[[dict[str, t.Any]], None] | None = None,
    **append: t.Any,
) -> dict[str, t.Any]:
    """Append one terminal ``event`` under the execution's row lock; return the row as it is after.

    The lock is what makes it exactly one terminal event however many
    requests, workers and hosts race: the losers wait for it, then see the
    execution ended (SPEC §2).
    """
    execution = storage.get_execution(cur, kind, exec_id, lock=True)
    if execution is None:
        raise NotFound()
    if check is not None:
        check(execution)
    if execution["terminal_event_id"] is not None:
        raise Conflict("the execution has already ended")
    # On the row locked above: one lock, one read.
    result = _append_locked(cur, execution, [event], **append)
    return {**execution, "status": result.status, "last_event_id": result.last_id, "terminal_event_id": result.last_id}


def cancel(
    cur: Cursor,
    exec_id: str,
    *,
    reason: str | None = None,
    kind: str | None = None,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
) -> dict[str, t.Any]:
    """Cancel an execution inside the caller's transaction; return its row as it is after.

    Appends one ``error`` event ``{status: "CANCELED", error: {message:
    reason or "canceled", code: "canceled"}}`` (SPEC §2); the reason is
    redacted as event data is.

    :raises NotFound: unknown execution (of ``kind``, when given).
    :raises Conflict: it has already ended (``complete`` or ``error``).
    :raises Invalid: a reason that is not a non-empty string.
    :raises TooLarge: a reason over the event size limit.
    """
    return _end(cur, exec_id, _cancel_event(reason), kind=kind, redact=redact, notify=notify)


class Producer:
    """Appends in transactions of its own, the wake-up after the commit: one round trip for an
    execution this producer has appended to before, two for the first append."""

    def __init__(
        self,
        db: Database,
        *,
        notify: bool = True,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Redactor | None = DEFAULT_REDACTOR,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    ) -> None:
        self.db = db
        self.notify = notify
        self.max_event_bytes = max_event_bytes
        self.redact = redact
        self.max_json_depth = max_json_depth
        self._known = KnownExecutions()

    def create_execution(self, kind: str, name: str, owner_id: str, **fields: t.Any) -> dict[str, t.Any]:
        """Create an execution in its own transaction (see :func:`create_execution`).

        Its ``input`` goes through this producer's redactor unless ``redact=`` is given.
        """
        fields.setdefault("redact", self.redact)
        fields.setdefault("max_json_depth", self.max_json_depth)
        with self.db.transaction() as cur:
            return create_execution(cur, kind, name, owner_id, **fields)

    def append_events(
        self,
        exec_id: str,
        events: Sequence[t.Any],
        *,
        kind: str | None = None,
        check: Callable[[dict[str, t.Any]], None] | None = None,
    ) -> AppendResult:
        """Append a batch in its own transaction (see :func:`append_events` for errors).

        ``check(execution)`` runs on the locked execution row before anything
        is validated or stored; the HTTP layer authorizes there, in the same
        transaction, instead of in one of its own.
        """
        known = self._known.get(exec_id)
        if known is not None and (kind is None or known["kind"] == kind) and not _has_sequence(events):
            result = self._append_known(known, events, check)
            if result is not None:
                return result
            # Nothing was written: the execution has ended. The locking path says so (Conflict).
        with self.db.connection() as conn, _own_transactions(conn):
            return self._append(conn, exec_id, events, kind, check)

    def cancel(
        self,
        exec_id: str,
        *,
        reason: str | None = None,
        kind: str | None = None,
        check: Callable[[dict[str, t.Any]], None] | None = None,
    ) -> dict[str, t.Any]:
        """Cancel an execution in a transaction of its own (see :func:`cancel` for errors).

        ``check(execution)`` runs on the locked row first, as in :meth:`append_events`.
        Cancels are rare: the wake-up simply rides in the same transaction.
        """
        with self.db.transaction() as cur:
            return _end(
                cur,
                exec_id,
                _cancel_event(reason),
                kind=kind,
                check=check,
                redact=self.redact,
                notify=self.notify,
                max_event_bytes=self.max_event_bytes,
                max_json_depth=self.max_json_depth,
            )

    def _append(
        self,
        conn: Connection,
        exec_id: str,
        events: Sequence[t.Any],
        kind: str | None,
        check: Callable[[dict[str, t.Any]], None] | None,
    ) -> AppendResult:
        with conn.cursor() as cur:
            execution = storage.begin_and_lock(cur, kind, exec_id)
            prepared = _prepare(execution, events, self.max_event_bytes, self.redact, check, self.max_json_depth)
            try:
                storage.commit_events(cur, exec_id, prepared.append, notify_after=self.notify)
            except psycopg2.Error:
                if conn.closed or conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
                    raise  # failed before COMMIT: nothing is stored
                # Stored; only the wake-up failed. The safety check delivers within poll_ms.
                log.warning("NOTIFY after an append failed; streams catch up by the safety check")
        self._known.remember(t.cast(dict[str, t.Any], execution))
        counters.APPENDS.inc(len(prepared.append.rows))  # committed: once per batch (SPEC §9)
        return prepared.result

    def _append_known(
        self,
        known: dict[str, t.Any],
        events: Sequence[t.Any],
        check: Callable[[dict[str, t.Any]], None] | None,
    ) -> AppendResult | None:
        """Append to an execution this worker has seen, in one round trip; ``None`` if it has ended.

        What is checked here does not change over an execution's life (kind, owner, output
        schema); whether it has ended is checked by the statement itself, under its row lock.
        """
        if check is not None:
            check(known)
        checked, _ = _check_batch(known, events, self.max_event_bytes, self.redact, self.max_json_depth)
        ts = _now()
        tails, status, terminal_offset = [], None, None
        for place, (type_name, data, data_json) in enumerate(checked, 1):
            tails.append((type_name, _envelope_tail(type_name, ts, known, data_json)))
            status = catalog.status_after(known["kind"], type_name, data) or status
            if type_name in catalog.TERMINAL_TYPES:
                terminal_offset = place
        with self.db.connection() as conn, _own_transactions(conn), conn.cursor() as cur:
            try:
                outcome = storage.append_known(
                    cur,
                    known["exec_id"],
                    tails,
                    ts,
                    status=status,
                    terminal_offset=terminal_offset,
                    notify=self.notify,
                )
            except psycopg2.Error:
                if conn.closed or conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
                    raise  # failed before COMMIT: nothing is stored
                log.warning("NOTIFY after an append failed; streams catch up by the safety check")
                outcome = storage.last_append(cur)
        if outcome is None:
            return None
        before, new_status = outcome
        counters.APPENDS.inc(len(tails))
        return AppendResult(before + 1, before + len(tails), new_status)


@contextlib.contextmanager
def _own_transactions(conn: Connection) -> t.Iterator[None]:
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


def _has_sequence(events: Sequence[t.Any]) -> bool:
    """Whether a batch holds a type whose sequence is checked against the row (structured_delta)."""
    for event in events:
        spec = catalog.CATALOG.get(str(event.get("type"))) if isinstance(event, dict) else None
        if spec is not None and spec.sequence_field:
            return True
    return False


class KnownExecutions:
    """What never changes about the executions this worker appended to lately (kind, owner, schema).

    Ended executions are known too: their next append takes the locking path and gets its 409.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._rows: collections.OrderedDict[str, dict[str, t.Any]] = collections.OrderedDict()

    def get(self, exec_id: str) -> dict[str, t.Any] | None:
        return self._rows.get(exec_id)

    def remember(self, execution: dict[str, t.Any]) -> None:
        # The changing fields are blanked so nothing can read them as current.
        self._rows[execution["exec_id"]] = {
            **execution,
            "status": None,
            "last_event_id": None,
            "terminal_event_id": None,
            "last_sequence": 0,
        }
        self._rows.move_to_end(execution["exec_id"])
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
