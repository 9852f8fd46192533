"""The Types section of ``docs/events.md``, written from the event catalog (SPEC §4).

Pure: no I/O. :func:`markdown` renders each :data:`catalog.CATALOG` type as
its rules, a field table and an example frame; ``tests/test_events_doc.py``
fails while the page is stale.
"""

from __future__ import annotations

import json
import typing as t

from .catalog import CATALOG
from .catalog import KINDS
from .catalog_types import EventType
from .catalog_types import Field

_EXAMPLE_TS = "2026-11-25T17:22:04.972032Z"
_EXAMPLE_EXEC_IDS = {"workflow": "demo-1", "agent": "a-8", "task": "t-3"}


def markdown() -> str:
    """The Types section of ``docs/events.md``: per type its rules, field table and an example frame."""
    return "\n\n".join(_markdown_type(e) for e in CATALOG.values()) + "\n"


def _markdown_type(e: EventType) -> str:
    kinds = "all kinds" if set(e.kinds) == set(KINDS) else ", ".join(e.kinds)
    flags = ("durable" if e.durable else "never durable") + (", terminal" if e.terminal else "")
    step = next((f.name for f in e.fields if f.marks_step), None)
    about = [e.description]
    if e.terminal:
        about.append("Sets the execution's status; the stream ends after it.")
    elif e.sets_status_of:
        unless = f" unless `{step}` is set (a step)" if step else ""
        about.append(f"Sets the status of {' and '.join(e.sets_status_of)} executions{unless}.")
    if e.requires_output_schema:
        about.append("Only in executions with an `output_schema`.")
    return "\n".join(
        [
            f"### `{e.name}` — {kinds} — {flags}",
            "",
            *about,
            "",
            "| field | type | required |",
            "|---|---|---|",
            *_markdown_rows(e.fields, "", step),
            "",
            "```",
            *_example_frame(e),
            "```",
        ]
    )


def _markdown_rows(fields: tuple[Field, ...], prefix: str, step: str | None) -> t.Iterator[str]:
    for f in fields:
        cell = f.type
        if f.choices:
            cell += ": " + ", ".join(f"`{c}`" for c in f.choices)
        if f.minimum is not None:
            cell += f" ≥ {f.minimum}"
        notes = [cell]
        if f.own_status_choices:
            own = ", ".join(f"`{c}`" for c in f.own_status_choices)
            notes.append(f"without `{step}`: {own} (end an execution with `complete` or `error`)")
        if f.marks_step:
            notes.append("set on a step inside the execution")
        if f.sequence:
            notes.append(f"starts at {f.minimum} and grows by 1 per execution (a gap or repeat is 422)")
        if f.schema_checked:
            notes.append("checked against the execution's `output_schema` (422 with the validator's message)")
        required = "yes" if f.required else "no"
        if f.required_in and not f.required:
            required = "in " + ", ".join(f"{kind}s" for kind in f.required_in)
        yield f"| `{prefix}{f.name}` | {'; '.join(notes)} | {required} |"
        yield from _markdown_rows(f.fields, f"{prefix}{f.name}.", step)


def _example_frame(e: EventType) -> list[str]:
    ex = e.example
    exec_id = _EXAMPLE_EXEC_IDS[ex.kind]
    if not e.durable:
        # As the hub frames a JSON-mode chunk (SPEC §5 point 2): no id, default separators.
        chunk = {"type": e.name, "exec_id": exec_id, "kind": ex.kind, "data": ex.data}
        return [f"event: {e.name}", f"data: {json.dumps(chunk, ensure_ascii=False)}"]
    envelope = {"id": ex.id, "type": e.name, "ts": _EXAMPLE_TS, "exec_id": exec_id, "kind": ex.kind, "data": ex.data}
    return [f"id: {ex.id}", f"event: {e.name}", f"data: {json.dumps(envelope, separators=(',', ':'))}"]
