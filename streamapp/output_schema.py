"""Execution output schemas: JSON Schema documents, checked when stored and against outputs (issue 5).

A schema must resolve every ``$ref`` inside itself: the server never fetches
a document from elsewhere, so a reference it cannot follow is refused when the
execution is created, not discovered at ``complete``.
"""

from __future__ import annotations

import typing as t

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema

from .errors import Invalid


def check_schema(schema: t.Any) -> None:
    """Check that ``schema`` is a valid JSON Schema document.

    :raises Invalid: with the validator's message.
    """
    if not isinstance(schema, (dict, bool)):
        raise Invalid("output_schema must be a JSON Schema (an object, true or false)")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise Invalid(f"output_schema is not a valid JSON Schema: {exc.message}") from None
    _check_refs(schema)


def _check_refs(schema: t.Any) -> None:
    """Every ``$ref`` must resolve inside the schema itself: the server never fetches one."""
    if not isinstance(schema, dict):
        return
    dialect = jsonschema.validators.validator_for(schema).META_SCHEMA["$id"]
    root = referencing.jsonschema.specification_with(dialect).create_resource(schema)
    resolver = referencing.Registry().resolver_with_root(root)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except referencing.exceptions.Unresolvable:
                    raise Invalid(
                        f"output_schema: $ref {ref!r} does not resolve inside the schema "
                        "(references to other documents are not fetched)"
                    ) from None
            stack.extend(node.values())


def _validator(schema: t.Any) -> t.Any:
    # An empty registry with no retrieval: a $ref to another document is unresolvable.
    return jsonschema.validators.validator_for(schema)(schema, registry=referencing.Registry())


def check_value(where: str, schema: dict[str, t.Any] | bool | None, data: dict[str, t.Any], name: str) -> None:
    """Check ``data[name]`` against the execution's output schema (issue 5).

    :raises Invalid: with the validator's own message.
    """
    if schema is None or name not in data:
        return
    try:
        error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(data[name]))
    except referencing.exceptions.Unresolvable as exc:
        # Schemas stored before $refs were checked at creation.
        raise Invalid(f"{where}: output_schema has an unresolvable $ref: {exc}") from None
    except RecursionError:
        # A $ref cycle that never moves into the value ({"$ref": "#"}) validates without end;
        # values nest no deeper than STREAMAPP_MAX_JSON_DEPTH, so only a cycle gets here (issue 11).
        raise Invalid(f"{where}: output_schema refers to itself without end (a $ref cycle)") from None
    if error is not None:
        raise Invalid(f"{where} does not match output_schema: {error.message}")
