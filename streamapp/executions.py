"""New executions: their fields checked and redacted, then stored (SPEC §2, §7).

Runs inside the caller's transaction, as every producer function does; the
``Producer`` runs it in one of its own.
"""

from __future__ import annotations

import typing as t

from . import catalog
from . import nesting
from . import storage
from .batches import DEFAULT_MAX_JSON_DEPTH
from .batches import DEFAULT_REDACTOR
from .batches import Redactor
from .errors import Invalid
from .exec_ids import EXEC_ID_PATTERN
from .exec_ids import EXEC_ID_RULE
from .exec_ids import new_exec_id
from .output_schema import check_schema

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

    from .storage import Execution


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
) -> Execution:
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
