"""The event catalog (SPEC §4): the one source of truth for validation and docs.

``validate_event`` checks an event against it; ``describe`` publishes it as
JSON for ``GET /api/v0/events/catalog``; ``docs/events.md`` is written from the
same table. Types outside the catalog that match :data:`TYPE_PATTERN` are
stored and streamed as they are.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from .errors import Invalid

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
KINDS = ("workflow", "agent", "task")
STATUSES = ("PENDING", "RUNNING", "PAUSED", "SUCCESS", "FAILED", "CANCELED", "TIMED_OUT")
TERMINAL_STATUSES = ("SUCCESS", "FAILED", "CANCELED", "TIMED_OUT")
LIVE_STATUSES = ("PENDING", "RUNNING", "PAUSED")
TERMINAL_TYPES = ("complete", "error")
ERROR_STATUSES = ("FAILED", "CANCELED", "TIMED_OUT")

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "object": (dict,),
    "any": (object,),
}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None


@dataclasses.dataclass(frozen=True)
class EventType:
    name: str
    kinds: tuple[str, ...]
    fields: tuple[Field, ...]
    durable: bool = True
    terminal: bool = False
    description: str = ""


def _f(name: str, type_: str, required: bool = False, **kw: t.Any) -> Field:
    return Field(name, type_, required, **kw)


_STEP = "task steps inside a workflow carry task_id and may carry any status"

CATALOG: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType(
            "workflow_start", ("workflow",),
            (_f("workflow_id", "string", True), _f("input", "any")),
            description="The workflow began.",
        ),
        EventType(
            "workflow_status", ("workflow",),
            (_f("status", "string", True, choices=LIVE_STATUSES), _f("reason", "string")),
            description="The workflow's status changed; updates the execution's status.",
        ),
        EventType(
            "agent_status", ("agent",),
            (
                _f("status", "string", True, choices=STATUSES),
                _f("task_id", "string"),
                _f("reason", "string"),
            ),
            description=(
                "The agent's status changed (PENDING, RUNNING or PAUSED); "
                "a step inside it carries task_id and may carry any status."
            ),
        ),
        EventType(
            "task_status", ("task", "workflow"),
            (
                _f("status", "string", True, choices=STATUSES),
                _f("task_id", "string"),
                _f("reason", "string"),
            ),
            description=f"The task's status changed; {_STEP}.",
        ),
        EventType(
            "tool_call", KINDS,
            (
                _f("tool_call_id", "string", True),
                _f("tool_name", "string", True),
                _f("status", "string", True),
                _f("input", "any"),
                _f("output", "any"),
                _f("error", "any"),
                _f("duration_ms", "number", minimum=0),
            ),
            description="A tool was called, or a call progressed.",
        ),
        EventType(
            "structured_delta", ("agent", "task"),
            (_f("content", "any", True), _f("sequence", "integer", True, minimum=1)),
            description="Partial structured output (JSON mode); sequence starts at 1, +1 each.",
        ),
        EventType(
            "warning", KINDS,
            (_f("code", "string", True), _f("message", "string", True)),
            description="Something worth knowing went wrong without ending the execution.",
        ),
        EventType(
            "complete", KINDS,
            (
                _f("status", "string", True, choices=("SUCCESS",)),
                _f("output", "any"),
                _f("usage", "object"),
            ),
            terminal=True,
            description="The execution succeeded; carries the full output. Terminal.",
        ),
        EventType(
            "error", KINDS,
            (_f("status", "string", True, choices=ERROR_STATUSES), _f("error", "object", True)),
            terminal=True,
            description="The execution failed, was canceled or timed out. Terminal.",
        ),
        EventType(
            "llm_chunk", KINDS,
            (_f("content", "string", True),),
            durable=False,
            description="Best-effort text; never stored, never has an id.",
        ),
    )
}

_STATUS_TYPES = {"workflow": "workflow_status", "agent": "agent_status", "task": "task_status"}


def _check_field(type_name: str, field: Field, data: dict[str, t.Any]) -> None:
    where = f"{type_name}.data.{field.name}"
    if field.name not in data:
        if field.required:
            raise Invalid(f"{where} is required")
        return
    value = data[field.name]
    expected = _JSON_TYPES[field.type]
    if field.type != "any" and (not isinstance(value, expected) or isinstance(value, bool)):
        raise Invalid(f"{where} must be a JSON {field.type}")
    if field.choices and value not in field.choices:
        raise Invalid(f"{where} must be one of {', '.join(field.choices)}")
    if field.minimum is not None and value < field.minimum:
        raise Invalid(f"{where} must be at least {field.minimum}")


def validate_event(kind: str, type_name: str, data: t.Any) -> None:
    """Check one event against the type pattern and the catalog.

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
    for field in spec.fields:
        _check_field(type_name, field, data)
    if type_name == "error":
        _check_error_object(data["error"])
    if type_name == "task_status" and kind == "workflow" and "task_id" not in data:
        raise Invalid("task_status.data.task_id is required inside a workflow")
    if is_own_status(kind, type_name, data) and data["status"] not in LIVE_STATUSES:
        raise Invalid(
            f"{type_name}.data.status must be one of {', '.join(LIVE_STATUSES)}; "
            "end an execution with a complete or error event"
        )


def _check_error_object(error: dict[str, t.Any]) -> None:
    if not isinstance(error.get("message"), str):
        raise Invalid("error.data.error.message is required and must be a JSON string")
    if "code" in error and not isinstance(error["code"], str):
        raise Invalid("error.data.error.code must be a JSON string")


def is_own_status(kind: str, type_name: str, data: dict[str, t.Any]) -> bool:
    """Whether this event is about the execution itself (not a step inside it)."""
    return _STATUS_TYPES.get(kind) == type_name and "task_id" not in data


def status_after(kind: str, type_name: str, data: dict[str, t.Any]) -> str | None:
    """The execution status an event sets, or ``None`` if it sets none."""
    if type_name in TERMINAL_TYPES:
        return str(data["status"])
    if is_own_status(kind, type_name, data):
        return str(data["status"])
    return None


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
                "description": e.description,
                "fields": [
                    {
                        "name": f.name,
                        "type": f.type,
                        "required": f.required,
                        **({"choices": list(f.choices)} if f.choices else {}),
                        **({"minimum": f.minimum} if f.minimum is not None else {}),
                    }
                    for f in e.fields
                ],
            }
            for e in CATALOG.values()
        ],
    }
