"""The shapes the event catalog is written in: a field and its rules, a type, an example (SPEC §4).

Pure data, no I/O: :mod:`streamapp.catalog` fills them in and checks events
against them; they are re-exported there (``catalog.Field``).
"""

from __future__ import annotations

import dataclasses
import typing as t


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of an event's ``data`` and the rules its value follows."""

    name: str
    type: str
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    #: Kinds of execution in which the field is required although optional elsewhere.
    required_in: tuple[str, ...] = ()
    #: Its presence makes the event about a step inside the execution, not the execution itself.
    marks_step: bool = False
    #: The statuses allowed when the event sets the execution's own status (SPEC §2).
    own_status_choices: tuple[str, ...] = ()
    #: Starts at ``minimum`` and grows by 1 per execution (SPEC §2).
    sequence: bool = False
    #: Checked against the execution's ``output_schema`` (issue 5).
    schema_checked: bool = False
    #: The keys of an object value, checked the same way.
    fields: tuple[Field, ...] = ()


@dataclasses.dataclass(frozen=True)
class Example:
    """The ``data`` of one example frame in ``docs/events.md``."""

    kind: str
    data: dict[str, t.Any]
    id: int | None = None


@dataclasses.dataclass(frozen=True)
class EventType:
    name: str
    kinds: tuple[str, ...]
    fields: tuple[Field, ...]
    example: Example
    durable: bool = True
    terminal: bool = False
    #: Kinds whose execution status the event sets, unless a ``marks_step`` field is present.
    sets_status_of: tuple[str, ...] = ()
    #: Only in executions with an ``output_schema`` (JSON mode, SPEC §5 point 2).
    requires_output_schema: bool = False
    description: str = ""

    @property
    def sequence_field(self) -> str | None:
        """The name of the field numbered 1, 2, 3, … per execution, if any."""
        return next((f.name for f in self.fields if f.sequence), None)

    @property
    def schema_checked_fields(self) -> tuple[str, ...]:
        """The fields the producer checks against the execution's ``output_schema``."""
        return tuple(f.name for f in self.fields if f.schema_checked)
