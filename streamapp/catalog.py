"""The event catalog (SPEC §4): the one source of truth for validation and docs.

Every rule is data on :class:`Field` and :class:`EventType`: ``validate_event``
checks an event against it, ``describe`` publishes it as JSON for
``GET /api/v0/events/catalog``, and :mod:`streamapp.events_doc` writes the
Types section of ``docs/events.md`` from it.
Rules that need the stored execution (``requires_output_schema``,
``sequence``) are checked when the caller passes what it knows;
``schema_checked`` fields are validated by the producer, which holds the
schema. Types outside the catalog that match :data:`TYPE_PATTERN` are stored
and streamed as they are.
"""

from __future__ import annotations

import re
import typing as t

# Re-exported: callers name them catalog.Field, catalog.EventType.
from .catalog_types import EventType as EventType
from .catalog_types import Example as Example
from .catalog_types import Field as Field
from .errors import Invalid

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
KINDS = ("workflow", "agent", "task")
STATUSES = ("PENDING", "RUNNING", "PAUSED", "SUCCESS", "FAILED", "CANCELED", "TIMED_OUT")
TERMINAL_STATUSES = ("SUCCESS", "FAILED", "CANCELED", "TIMED_OUT")
LIVE_STATUSES = ("PENDING", "RUNNING", "PAUSED")
ERROR_STATUSES = ("FAILED", "CANCELED", "TIMED_OUT")

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "object": (dict,),
    "any": (object,),
}


def _f(name: str, type_: str, required: bool = False, **kw: t.Any) -> Field:
    return Field(name, type_, required, **kw)


def _status_fields(step_required_in: tuple[str, ...] = ()) -> tuple[Field, ...]:
    """``agent_status`` / ``task_status``: any status for a step, a live one for the execution."""
    return (
        _f("status", "string", True, choices=STATUSES, own_status_choices=LIVE_STATUSES),
        _f("task_id", "string", marks_step=True, required_in=step_required_in),
        _f("reason", "string"),
    )


CATALOG: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType(
            "workflow_start",
            ("workflow",),
            (_f("workflow_id", "string", True), _f("input", "any")),
            Example("workflow", {"workflow_id": "nightly-report"}, 1),
            description="The workflow began.",
        ),
        EventType(
            "workflow_status",
            ("workflow",),
            (_f("status", "string", True, choices=LIVE_STATUSES), _f("reason", "string")),
            Example("workflow", {"status": "RUNNING"}, 2),
            sets_status_of=("workflow",),
            description="The workflow's status changed.",
        ),
        EventType(
            "agent_status",
            ("agent",),
            _status_fields(),
            Example("agent", {"status": "RUNNING"}, 1),
            sets_status_of=("agent",),
            description="The agent's status changed, or (with `task_id`) a step inside it did.",
        ),
        EventType(
            "task_status",
            ("task", "workflow"),
            _status_fields(step_required_in=("workflow",)),
            Example("workflow", {"status": "SUCCESS", "task_id": "fetch"}, 3),
            sets_status_of=("task",),
            description=(
                "The task's status changed, or (with `task_id`) a step did. Inside a workflow each "
                "`task_status` is a step, so a workflow view renders its steps one by one."
            ),
        ),
        EventType(
            "tool_call",
            KINDS,
            (
                _f("tool_call_id", "string", True),
                _f("tool_name", "string", True),
                _f("status", "string", True),
                _f("input", "any"),
                _f("output", "any"),
                _f("error", "any"),
                _f("duration_ms", "number", minimum=0),
            ),
            Example("workflow", {"tool_call_id": "c1", "tool_name": "sql", "status": "done", "duration_ms": 12}, 4),
            description=(
                "A tool was called, or a call progressed. `input`, `output` and `error` are redacted "
                "before storage (see `docs/security.md`)."
            ),
        ),
        EventType(
            "structured_delta",
            ("agent", "task"),
            (_f("content", "any", True), _f("sequence", "integer", True, minimum=1, sequence=True)),
            Example("agent", {"content": {"answer": "par"}, "sequence": 1}, 2),
            requires_output_schema=True,
            description="Partial structured output (JSON mode).",
        ),
        EventType(
            "warning",
            KINDS,
            (_f("code", "string", True), _f("message", "string", True)),
            Example("workflow", {"code": "slow", "message": "taking long"}, 5),
            description="Something worth knowing went wrong without ending the execution.",
        ),
        EventType(
            "complete",
            KINDS,
            (
                _f("status", "string", True, choices=("SUCCESS",)),
                _f("output", "any", schema_checked=True),
                _f("usage", "object"),
            ),
            Example("workflow", {"status": "SUCCESS", "output": {"rows": 42}}, 6),
            terminal=True,
            sets_status_of=KINDS,
            description=(
                "The execution succeeded. It carries the full output, so a client that missed text "
                "chunks still shows the whole answer."
            ),
        ),
        EventType(
            "error",
            KINDS,
            (
                _f("status", "string", True, choices=ERROR_STATUSES),
                _f("error", "object", True, fields=(_f("message", "string", True), _f("code", "string"))),
            ),
            Example("workflow", {"status": "FAILED", "error": {"message": "disk full", "code": "ENOSPC"}}, 6),
            terminal=True,
            sets_status_of=KINDS,
            description="The execution failed, was canceled or timed out.",
        ),
        EventType(
            "llm_chunk",
            KINDS,
            (_f("content", "string", True),),
            Example("agent", {"content": "par"}),
            durable=False,
            description="Best-effort text for the chunks endpoint; never stored, never has an id.",
        ),
    )
}

TERMINAL_TYPES = tuple(e.name for e in CATALOG.values() if e.terminal)


class _Context(t.NamedTuple):
    kind: str
    own: bool
    last_sequence: int | None
    nested: bool = False


def validate_event(
    kind: str,
    type_name: str,
    data: t.Any,
    *,
    has_output_schema: bool | None = None,
    last_sequence: int | None = None,
) -> None:
    """Check one event against the type pattern and the catalog.

    ``has_output_schema`` and ``last_sequence`` (0 before the first) describe
    the execution the event goes to; the rule that needs one is skipped while
    it is ``None``.

    :raises Invalid: naming what is wrong.
    """
    if not isinstance(type_name, str) or not TYPE_PATTERN.fullmatch(type_name):
        raise Invalid(f"type {type_name!r} must match ^{TYPE_PATTERN.pattern}$")
    if not isinstance(data, dict):
        raise Invalid(f"{type_name}.data must be a JSON object")
    spec = CATALOG.get(type_name)
    if spec is None:
        return
    if not spec.durable:
        raise Invalid(f"{type_name} is never durable: publish it to the chunks endpoint")
    if kind not in spec.kinds:
        raise Invalid(f"{type_name} is not an event of {kind} executions")
    if spec.requires_output_schema and has_output_schema is False:
        raise Invalid(f"{type_name} needs an execution with an output_schema")
    context = _Context(kind, _is_own(spec, kind, data), last_sequence)
    for field in spec.fields:
        _check_field(f"{type_name}.data", field, data, context)


def _check_field(where: str, field: Field, data: dict[str, t.Any], context: _Context) -> None:
    at = f"{where}.{field.name}"
    # Inside an object one message covers a required key that is missing or mistyped.
    missing = f"{at} is required and must be a JSON {field.type}" if context.nested else f"{at} is required"
    if field.name not in data:
        if field.required:
            raise Invalid(missing)
        if context.kind in field.required_in:
            raise Invalid(f"{at} is required inside a {context.kind}")
        return
    value = data[field.name]
    if field.type != "any" and (not isinstance(value, _JSON_TYPES[field.type]) or isinstance(value, bool)):
        raise Invalid(missing if context.nested and field.required else f"{at} must be a JSON {field.type}")
    if field.choices and value not in field.choices:
        raise Invalid(f"{at} must be one of {', '.join(field.choices)}")
    if context.own and field.own_status_choices and value not in field.own_status_choices:
        raise Invalid(
            f"{at} must be one of {', '.join(field.own_status_choices)}; "
            "end an execution with a complete or error event"
        )
    if field.minimum is not None and value < field.minimum:
        raise Invalid(f"{at} must be at least {field.minimum}")
    if field.sequence and context.last_sequence is not None and value != context.last_sequence + 1:
        raise Invalid(f"{at} must be {context.last_sequence + 1}, got {value}")
    for key in field.fields:
        _check_field(at, key, value, context._replace(nested=True))


def _is_own(spec: EventType, kind: str, data: dict[str, t.Any]) -> bool:
    return kind in spec.sets_status_of and not any(f.marks_step and f.name in data for f in spec.fields)


def is_own_status(kind: str, type_name: str, data: dict[str, t.Any]) -> bool:
    """Whether this event sets the execution's own status (not a step's inside it)."""
    spec = CATALOG.get(type_name)
    return spec is not None and _is_own(spec, kind, data)


def status_after(kind: str, type_name: str, data: dict[str, t.Any]) -> str | None:
    """The execution status an event sets, or ``None`` if it sets none."""
    return str(data["status"]) if is_own_status(kind, type_name, data) else None


def _describe_field(f: Field) -> dict[str, t.Any]:
    optional: dict[str, t.Any] = {
        "choices": list(f.choices),
        "minimum": f.minimum,
        "required_in": list(f.required_in),
        "marks_step": f.marks_step,
        "own_status_choices": list(f.own_status_choices),
        "sequence": f.sequence,
        "schema_checked": f.schema_checked,
        "fields": [_describe_field(key) for key in f.fields],
    }
    # Only the rules a field has, so a plain field stays {name, type, required}.
    set_ = {k: v for k, v in optional.items() if v is not None and v is not False and v != []}
    return {"name": f.name, "type": f.type, "required": f.required, **set_}


def describe() -> dict[str, t.Any]:
    """The catalog as JSON (``GET /api/v0/events/catalog``)."""
    return {
        "type_pattern": f"^{TYPE_PATTERN.pattern}$",
        "terminal_types": list(TERMINAL_TYPES),
        "types": [
            {
                "type": e.name,
                "kinds": list(e.kinds),
                "durable": e.durable,
                "terminal": e.terminal,
                "sets_status_of": list(e.sets_status_of),
                "requires_output_schema": e.requires_output_schema,
                "description": e.description,
                "fields": [_describe_field(f) for f in e.fields],
            }
            for e in CATALOG.values()
        ],
    }
