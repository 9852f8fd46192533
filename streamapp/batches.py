"""A batch of durable events, checked whole and rendered before anything is stored (SPEC §2, §4).

A batch is all or nothing: every event is judged against the execution it goes
to (its locked row, or what a worker remembers of it) and rendered as the rows
to store; only then does the caller write them. Nothing here touches the
database.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import typing as t
from collections.abc import Callable
from collections.abc import Sequence

from . import appends
from . import catalog
from . import nesting
from . import redact as redaction
from .errors import Conflict
from .errors import Invalid
from .errors import TooLarge
from .output_schema import check_value
from .storage import Execution

DEFAULT_MAX_EVENT_BYTES = 256 * 1024
DEFAULT_MAX_JSON_DEPTH = nesting.DEFAULT_MAX_DEPTH
Redactor = Callable[[t.Any], t.Any]
#: Secrets are redacted before storage unless a caller passes another redactor (SPEC §7).
DEFAULT_REDACTOR: Redactor = redaction.Redactor()


@dataclasses.dataclass(frozen=True)
class Rules:
    """What a batch is held to: the size of one event's data, the redactor (``None``: none), the nesting limit."""

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    redact: Redactor | None = DEFAULT_REDACTOR
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH


@dataclasses.dataclass(frozen=True)
class AppendResult:
    first_id: int
    last_id: int
    status: str


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A batch for an execution whose row is locked: its rows with their ids, and what the append returns."""

    append: appends.Append
    result: AppendResult


@dataclasses.dataclass(frozen=True)
class Tails:
    """A batch for an execution known from before: ``(type, envelope tail)`` rows, the id put in by the database."""

    tails: list[tuple[str, str]]
    ts: str
    status: str | None
    #: The 1-based place of a terminal event in the batch.
    terminal_offset: int | None


def has_sequence(events: Sequence[t.Any]) -> bool:
    """Whether a batch holds a type whose sequence is checked against the row (structured_delta)."""
    for event in events:
        spec = catalog.CATALOG.get(str(event.get("type"))) if isinstance(event, dict) else None
        if spec is not None and spec.sequence_field:
            return True
    return False


def render(execution: Execution, events: Sequence[t.Any], rules: Rules) -> Rendered:
    """Check a batch against the locked ``execution`` and render its rows; nothing is stored yet.

    :raises Conflict: after a terminal event.
    :raises Invalid: a type, data or sequence that breaks the catalog, or data nested too deeply.
    :raises TooLarge: an event's data over ``rules.max_event_bytes``.
    """
    checked, sequence = _check(execution, events, rules)
    first_id = execution["last_event_id"] + 1
    ts = _now()
    rows = []
    status = None
    terminal_id = None
    for offset, (type_name, data, data_json) in enumerate(checked):
        event_id = first_id + offset
        envelope = f'{{"id":{event_id:d}' + _envelope_tail(type_name, ts, execution, data_json)
        rows.append((event_id, type_name, ts, envelope))
        status = catalog.status_after(execution["kind"], type_name, data) or status
        if type_name in catalog.TERMINAL_TYPES:
            terminal_id = event_id
    result = AppendResult(first_id, first_id + len(rows) - 1, status or execution["status"])
    return Rendered(appends.Append(rows, status, sequence, terminal_id), result)


def render_tails(known: Execution, events: Sequence[t.Any], rules: Rules) -> Tails:
    """Check a batch against what is ``known`` of its execution and render it without ids.

    What is checked here does not change over an execution's life (kind, owner, output
    schema); whether it has ended is checked by the statement that stores it, under its
    row lock. Raises as :func:`render`.
    """
    checked, _ = _check(known, events, rules)
    ts = _now()
    tails, status, terminal_offset = [], None, None
    for place, (type_name, data, data_json) in enumerate(checked, 1):
        tails.append((type_name, _envelope_tail(type_name, ts, known, data_json)))
        status = catalog.status_after(known["kind"], type_name, data) or status
        if type_name in catalog.TERMINAL_TYPES:
            terminal_offset = place
    return Tails(tails, ts, status, terminal_offset)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check(
    execution: Execution, events: Sequence[t.Any], rules: Rules
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
        nesting.check_value(data, rules.max_json_depth, f"events[{index}].data")
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
        if rules.redact is not None:
            data = rules.redact(data)
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        try:
            size = len(data_json.encode())
        except UnicodeEncodeError:
            raise Invalid(f"events[{index}].data holds a lone UTF-16 surrogate, which cannot be stored") from None
        if size > rules.max_event_bytes:
            raise TooLarge(f"events[{index}].data is over {rules.max_event_bytes} bytes")
        terminal_seen = type_name in catalog.TERMINAL_TYPES
        checked.append((type_name, data, data_json))
    return checked, sequence


def _envelope_tail(type_name: str, ts: str, execution: Execution, data_json: str) -> str:
    """The envelope after its ``{"id":N``; the known-execution path has the database put the id in front.

    Built by hand around the already-encoded data so it is encoded once.
    """
    head = json.dumps(
        {"type": type_name, "ts": ts, "exec_id": execution["exec_id"], "kind": execution["kind"]},
        separators=(",", ":"),
    )
    return "," + head[1:-1] + ',"data":' + data_json + "}"
