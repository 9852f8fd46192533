"""The producer API: create executions and append durable events (SPEC §2, §3).

Two ways to append:

* ``append_events(cur, exec_id, events)`` inside the caller's own psycopg2
  transaction: the host commits its own state and the events atomically; the
  ``NOTIFY`` is sent in that transaction (SPEC §3).
* ``Producer(db).append_events(exec_id, events)`` in a transaction of our own:
  the data commit carries no ``NOTIFY``; wake-ups are sent after commit,
  coalesced across concurrent producers of the process, in a short
  transaction with ``synchronous_commit`` off. PostgreSQL serializes the
  commits of notifying transactions on one database-wide lock; keeping the
  data commit (and its WAL flush) out from under it is what keeps appends/s
  near the no-NOTIFY bound (issue 4). A wake-up lost in between is covered by
  every worker's batched safety check within ``poll_ms``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import secrets
import threading
import typing as t
from collections.abc import Callable
from collections.abc import Sequence

import jsonschema
import psycopg2

from . import catalog
from . import redact as redaction
from . import storage
from .db import transaction_on
from .errors import Conflict
from .errors import Invalid
from .errors import NotFound
from .errors import TooLarge

if t.TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

EXEC_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
Redactor = Callable[[t.Any], t.Any]
#: Secrets are redacted before storage unless a caller passes another redactor (SPEC §7).
DEFAULT_REDACTOR: Redactor = redaction.Redactor()


@dataclasses.dataclass(frozen=True)
class AppendResult:
    first_id: int
    last_id: int
    status: str


def new_exec_id() -> str:
    """A fresh, unguessable, URL-safe execution id (128 random bits)."""
    return secrets.token_urlsafe(16)


def check_output_schema(schema: t.Any) -> None:
    """Check that ``schema`` is a valid JSON Schema document.

    :raises Invalid: with the validator's message.
    """
    if not isinstance(schema, dict):
        raise Invalid("output_schema must be a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise Invalid(f"output_schema is not a valid JSON Schema: {exc.message}") from None


def create_execution(
    cur: Cursor,
    kind: str,
    name: str,
    owner_id: str,
    *,
    exec_id: str | None = None,
    input: t.Any = None,
    output_schema: dict[str, t.Any] | None = None,
) -> dict[str, t.Any]:
    """Create an execution inside the caller's transaction; return its row.

    :raises Invalid: for a bad kind, exec_id or output schema.
    :raises Conflict: if ``exec_id`` is already in use.
    """
    if kind not in catalog.KINDS:
        raise Invalid(f"kind must be one of {', '.join(catalog.KINDS)}")
    if exec_id is not None and not EXEC_ID_PATTERN.fullmatch(exec_id):
        raise Invalid("exec_id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    if output_schema is not None:
        check_output_schema(output_schema)
    return storage.insert_execution(
        cur,
        exec_id=exec_id or new_exec_id(),
        kind=kind,
        name=name,
        owner_id=owner_id,
        input=input,
        output_schema=output_schema,
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_batch(
    execution: dict[str, t.Any],
    events: Sequence[t.Any],
    max_event_bytes: int,
) -> list[tuple[str, dict[str, t.Any], str]]:
    """Validate a whole batch before anything is stored; return ``(type, data, data_json)``."""
    if not events:
        raise Invalid("events must hold at least one event")
    checked = []
    terminal_seen = execution["terminal_event_id"] is not None
    sequence = execution["last_sequence"]
    for index, event in enumerate(events):
        if terminal_seen:
            raise Conflict("the execution has ended: no event may follow complete or error")
        if not isinstance(event, dict) or set(event) - {"type", "data"} or "type" not in event:
            raise Invalid(f"events[{index}] must be an object with 'type' and 'data'")
        type_name, data = event["type"], event.get("data", {})
        try:
            catalog.validate_event(execution["kind"], type_name, data)
        except Invalid as exc:
            raise Invalid(f"events[{index}]: {exc.message}") from None
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        if len(data_json.encode()) > max_event_bytes:
            raise TooLarge(f"events[{index}].data is over {max_event_bytes} bytes")
        if type_name == "structured_delta":
            if execution.get("output_schema") is None:
                raise Invalid(f"events[{index}]: structured_delta needs an execution with an output_schema")
            sequence = _check_sequence(index, data["sequence"], sequence)
        if type_name == "complete":
            _check_output(index, execution.get("output_schema"), data)
        terminal_seen = type_name in catalog.TERMINAL_TYPES
        checked.append((type_name, data, data_json))
    return checked


def _check_sequence(index: int, sequence: int, previous: int) -> int:
    if sequence != previous + 1:
        raise Invalid(f"events[{index}]: structured_delta.data.sequence must be {previous + 1}, got {sequence}")
    return sequence


def _check_output(index: int, schema: dict[str, t.Any] | None, data: dict[str, t.Any]) -> None:
    if schema is None or "output" not in data:
        return
    try:
        jsonschema.validate(data["output"], schema)
    except jsonschema.ValidationError as exc:
        raise Invalid(f"events[{index}]: complete.data.output does not match output_schema: {exc.message}") from None


def _envelope(event_id: int, type_name: str, ts: str, execution: dict[str, t.Any], data_json: str) -> str:
    # Built by hand around the already-encoded data so it is encoded once.
    head = json.dumps(
        {"id": event_id, "type": type_name, "ts": ts, "exec_id": execution["exec_id"], "kind": execution["kind"]},
        separators=(",", ":"),
    )
    return head[:-1] + ',"data":' + data_json + "}"


def _append(
    cur: Cursor,
    exec_id: str,
    events: Sequence[t.Any],
    kind: str | None,
    max_event_bytes: int,
    redact: Redactor | None,
    check: Callable[[dict[str, t.Any]], None] | None = None,
) -> AppendResult:
    execution = storage.get_execution(cur, kind, exec_id, lock=True)
    if execution is None:
        raise NotFound()
    if check is not None:
        check(execution)
    if redact is not None:
        events = [redact(e) for e in events]
    checked = _check_batch(execution, events, max_event_bytes)
    first_id = execution["last_event_id"] + 1
    ts = _now()
    rows = []
    status = None
    sequence = execution["last_sequence"]
    terminal_id = None
    for offset, (type_name, data, data_json) in enumerate(checked):
        event_id = first_id + offset
        rows.append((event_id, type_name, ts, _envelope(event_id, type_name, ts, execution, data_json)))
        status = catalog.status_after(execution["kind"], type_name, data) or status
        if type_name == "structured_delta":
            sequence = data["sequence"]
        if type_name in catalog.TERMINAL_TYPES:
            terminal_id = event_id
    storage.insert_events(
        cur, exec_id, rows, status=status, last_sequence=sequence, terminal_event_id=terminal_id
    )
    return AppendResult(first_id, first_id + len(rows) - 1, status or execution["status"])


def append_events(
    cur: Cursor,
    exec_id: str,
    events: Sequence[t.Any],
    *,
    kind: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
) -> AppendResult:
    """Append a batch inside the caller's transaction, all or nothing; NOTIFY on its commit.

    :raises NotFound: unknown execution (of ``kind``, when given).
    :raises Conflict: after a terminal event.
    :raises Invalid: a type, data or sequence that breaks the catalog (nothing stored).
    :raises TooLarge: an event's data over ``max_event_bytes``.
    """
    result = _append(cur, exec_id, events, kind, max_event_bytes, redact)
    if notify:
        storage.notify(cur, exec_id, result.last_id)
    return result


class _Wakeups:
    """Coalesces post-commit wake-ups: one flusher at a time sends all pending ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._flushing = False

    def send(self, conn: Connection, exec_id: str, last_id: int) -> None:
        with self._lock:
            self._pending[exec_id] = max(last_id, self._pending.get(exec_id, 0))
            if self._flushing:
                return  # the running flusher picks ours up
            self._flushing = True
        try:
            while True:
                with self._lock:
                    batch, self._pending = self._pending, {}
                    if not batch:
                        self._flushing = False
                        return
                self._flush(conn, batch)
        except BaseException:
            with self._lock:
                self._flushing = False
            raise

    @staticmethod
    def _flush(conn: Connection, batch: dict[str, int]) -> None:
        try:
            with transaction_on(conn) as cur:
                # Wake-ups are not durable anyway; not waiting for a WAL flush keeps
                # the database-wide notify lock held for microseconds.
                cur.execute("SET LOCAL synchronous_commit TO off")
                storage.notify_many(cur, batch)
        except psycopg2.Error:
            # The safety check delivers these within poll_ms; never fail a committed append.
            log.warning("post-commit NOTIFY failed for %d execution(s)", len(batch), exc_info=True)


class Producer:
    """Appends in transactions of its own, with coalesced post-commit wake-ups."""

    def __init__(
        self,
        db: Database,
        *,
        notify: bool = True,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Redactor | None = DEFAULT_REDACTOR,
    ) -> None:
        self.db = db
        self.notify = notify
        self.max_event_bytes = max_event_bytes
        self.redact = redact
        self._wakeups = _Wakeups()

    def create_execution(self, kind: str, name: str, owner_id: str, **fields: t.Any) -> dict[str, t.Any]:
        """Create an execution in its own transaction (see :func:`create_execution`)."""
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
        with self.db.connection() as conn:
            with transaction_on(conn) as cur:
                result = _append(cur, exec_id, events, kind, self.max_event_bytes, self.redact, check)
            if self.notify:
                self._wakeups.send(conn, exec_id, result.last_id)
        return result
