"""marshmallow schemas for request bodies, query strings and response documents."""

from __future__ import annotations

import re
import typing as t

from marshmallow import RAISE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate

from . import nesting
from .catalog import TYPE_PATTERN
from .exec_ids import EXEC_ID_PATTERN
from .exec_ids import EXEC_ID_RULE

_DIGITS = re.compile(r"[0-9]+")  # not \d: it matches every script's digits
#: Cursors are PostgreSQL bigints: any value below 2^63 (SPEC §5), so 19 digits past leading zeros.
CURSOR_LIMIT = 2**63


def _storable(value: t.Any) -> None:
    """PostgreSQL's text and jsonb cannot hold U+0000: refuse it (422), do not fail at insert (500)."""
    what = nesting.unstorable(value)
    if what is not None:
        raise ValidationError(f"must not contain {what}")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ExecutionCreate(_Strict):
    name = fields.String(required=True, validate=[validate.Length(min=1, max=200), _storable])
    input = fields.Raw(load_default=None, allow_none=True, validate=_storable)
    # Checked as a JSON Schema (an object, true or false) by output_schema.check_schema.
    output_schema = fields.Raw(load_default=None, allow_none=True, validate=_storable)
    exec_id = fields.String(
        load_default=None,
        validate=validate.Regexp(EXEC_ID_PATTERN, error=EXEC_ID_RULE),
    )
    owner = fields.String(load_default=None, validate=[validate.Length(min=1, max=254), _storable])


class EventsAppend(_Strict):
    events = fields.List(
        fields.Raw(), required=True, validate=validate.Length(min=1, max=1000, error="must hold 1 to 1000 events")
    )


class CursorField(fields.Field[int]):
    """A non-negative integer below 2^63 written in plain ASCII digits (``Last-Event-ID``, SPEC §5)."""

    def _deserialize(self, value: t.Any, attr: t.Any, data: t.Any, **kwargs: t.Any) -> int:
        # Length first: int() of a long digit string costs time before it can be refused.
        if not isinstance(value, str) or not _DIGITS.fullmatch(value) or len(value.lstrip("0")) > 19:
            raise ValidationError("must be a non-negative integer below 2^63 in plain digits")
        number = int(value)
        if number >= CURSOR_LIMIT:
            raise ValidationError("must be a non-negative integer below 2^63 in plain digits")
        return number


class PlainInteger(CursorField):
    """A query-string integer in plain ASCII digits: no sign, spaces, ``_`` or other scripts."""


class TypeList(fields.Field[frozenset[str]]):
    """``a,b,c``: event type names, each matching the catalog pattern."""

    def _deserialize(self, value: t.Any, attr: t.Any, data: t.Any, **kwargs: t.Any) -> frozenset[str]:
        names = [n.strip() for n in str(value).split(",")]
        bad = [n for n in names if not TYPE_PATTERN.fullmatch(n)]
        if bad:
            raise ValidationError(f"{bad[0]!r} is not an event type name (^{TYPE_PATTERN.pattern}$)")
        return frozenset(names)


class ListQuery(_Strict):
    limit = PlainInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


class StreamQuery(_Strict):
    last_event_id = CursorField(load_default=None)
    events = TypeList(load_default=None)
    poll_ms = PlainInteger(load_default=None, validate=validate.Range(min=250, max=2000))
    ticket = fields.String(load_default=None, validate=validate.Length(min=1, max=1000))


#: The kind segments a multiplexed stream may list (SPEC §5.6), as in a stream's URL.
STREAM_SEGMENTS = ("workflows", "agents", "tasks")


def stream_entries(values: t.Sequence[t.Any]) -> tuple[str, ...]:
    """``segment/exec_id`` entries as listed: 1 or more, distinct, each with a known segment.

    An exec_id no execution can have is not refused here: it is unknown, 404 (SPEC §5.6).
    """
    if not values:
        raise ValidationError("must list at least one execution as segment/exec_id")
    seen: set[str] = set()
    for value in values:
        segment, slash, _ = value.partition("/") if isinstance(value, str) else ("", "", "")
        if not slash or segment not in STREAM_SEGMENTS:
            shown = value[:80] if isinstance(value, str) else type(value).__name__
            raise ValidationError(f"{shown!r} is not segment/exec_id with a segment of {', '.join(STREAM_SEGMENTS)}")
        if value in seen:
            raise ValidationError(f"{value[:80]!r} is listed twice")
        seen.add(value)
    return tuple(values)


class StreamIds(fields.Field[tuple[str, ...]]):
    """``workflows/a,agents/b``: the executions of a multiplexed stream (SPEC §5.6)."""

    def _deserialize(self, value: t.Any, attr: t.Any, data: t.Any, **kwargs: t.Any) -> tuple[str, ...]:
        return stream_entries(str(value).split(",") if value else [])


class StreamsQuery(_Strict):
    ids = StreamIds(required=True)
    last_event_id = fields.String(load_default=None, validate=validate.Length(min=1, max=1024))
    events = TypeList(load_default=None)
    poll_ms = PlainInteger(load_default=None, validate=validate.Range(min=250, max=2000))
    ticket = fields.String(load_default=None, validate=validate.Length(min=1, max=1000))


class StreamTicketsIn(_Strict):
    """The body of ``POST /stream-tickets``: the executions the multiplexed stream lists (SPEC §5.6)."""

    ids = fields.List(fields.Raw(), required=True, validate=stream_entries)


class TokenCreate(_Strict):
    scopes = fields.List(
        fields.String(), required=True, validate=validate.Length(min=1, max=10, error="must list 1 to 10 scopes")
    )


class TokenOut(Schema):
    """A token as its owner may see it: never the secret part or the hash."""

    prefix = fields.String()
    scopes = fields.List(fields.String())
    created_at = fields.DateTime(format="iso")
    last_used_at = fields.DateTime(format="iso", allow_none=True)
    revoked_at = fields.DateTime(format="iso", allow_none=True)


class TokenCreated(Schema):
    """The answer to a token creation: the only place the whole token is ever shown."""

    token = fields.String()
    prefix = fields.String()
    scopes = fields.List(fields.String())
    created_at = fields.DateTime(format="iso")


class ExecutionOut(Schema):
    exec_id = fields.String()
    kind = fields.String()
    name = fields.String()
    status = fields.String()
    input = fields.Raw()
    output_schema = fields.Raw()
    owner = fields.String(attribute="owner_id")
    last_event_id = fields.Integer()
    created_at = fields.DateTime(format="iso")
    stream_url = fields.String()


class AppendOut(Schema):
    first_id = fields.Integer()
    last_id = fields.Integer()
    status = fields.String()


#: Made once: a marshmallow field costs more to make than to use, and every resumed connect uses it.
_CURSOR = CursorField()


def parse_cursor(value: str) -> int:
    """Parse a ``Last-Event-ID`` header value.

    :raises ValidationError: unless it is a non-negative integer below 2^63.
    """
    return _CURSOR.deserialize(value)


class CancelBody(_Strict):
    """The optional body of ``POST …/cancel`` (SPEC §2): the reason becomes the error's message."""

    reason = fields.String(load_default=None, validate=[validate.Length(min=1, max=1000), _storable])


# -- Shapes the views build or check by hand, described for the OpenAPI document (issue 9) --------
# The views do not load these; tests/test_openapi.py feeds the views bodies these schemas accept
# and checks their answers against them, so the document cannot drift from what the views do.


class ErrorDetail(Schema):
    code = fields.String(required=True, metadata={"description": "a short machine word: not_found, invalid, …"})
    message = fields.String(required=True)


class ErrorOut(Schema):
    """Every error body (SPEC §2): ``{"error": {"code", "message"}}``, as ``errors.problem`` builds it."""

    error = fields.Nested(ErrorDetail, required=True)


class EventIn(_Strict):
    """One event of ``POST …/events`` (SPEC §2, §4); ``catalog.validate_event`` checks it by hand."""

    type = fields.String(required=True, validate=validate.Regexp(rf"^{TYPE_PATTERN.pattern}$"))
    data = fields.Dict(load_default=dict, metadata={"description": "the catalog's fields for a catalog type"})


class ChunkText(_Strict):
    """``POST …/chunks`` with one text chunk (SPEC §2)."""

    text = fields.String(required=True, validate=[validate.Length(min=1), _storable])


class ChunkList(_Strict):
    """``POST …/chunks`` with several text chunks, in order (SPEC §2)."""

    chunks = fields.List(
        fields.String(validate=[validate.Length(min=1), _storable]),
        required=True,
        validate=validate.Length(min=1, max=1000),
    )


class ChunksOut(Schema):
    accepted = fields.Integer(required=True, metadata={"description": "how many chunks were published"})


class TicketOut(Schema):
    """A stream ticket (SPEC §7): pass it as ``?ticket=`` on the stream it names until it expires."""

    ticket = fields.String(required=True)
    expires_at = fields.DateTime(required=True, format="iso")


class ExecutionList(Schema):
    items = fields.List(fields.Nested(ExecutionOut), required=True)
    next_cursor = fields.String(
        required=True, allow_none=True, metadata={"description": "pass as ?cursor= for the next page; null at the end"}
    )


class TokenList(Schema):
    items = fields.List(fields.Nested(TokenOut), required=True)


class LoginIn(_Strict):
    email = fields.String(required=True, validate=_storable)
    password = fields.String(required=True)


class LoginOut(Schema):
    id = fields.String(required=True)
    email = fields.String(required=True)
    is_admin = fields.Boolean(required=True)


class CatalogField(Schema):
    """One key of an event type's ``data`` and its rules, as ``catalog.describe`` writes it."""

    name = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["string", "integer", "number", "object", "any"]))
    required = fields.Boolean(required=True)
    choices = fields.List(fields.String())
    minimum = fields.Integer()
    required_in = fields.List(fields.String())
    marks_step = fields.Boolean()
    own_status_choices = fields.List(fields.String())
    sequence = fields.Boolean()
    schema_checked = fields.Boolean()
    # "fields" would shadow marshmallow's module in this class body.
    keys = fields.List(fields.Nested(lambda: CatalogField()), data_key="fields")


class CatalogType(Schema):
    type = fields.String(required=True)
    kinds = fields.List(fields.String(), required=True)
    durable = fields.Boolean(required=True)
    terminal = fields.Boolean(required=True)
    sets_status_of = fields.List(fields.String(), required=True)
    requires_output_schema = fields.Boolean(required=True)
    description = fields.String(required=True)
    keys = fields.List(fields.Nested(CatalogField), required=True, data_key="fields")


class CatalogOut(Schema):
    """``GET …/events/catalog``: the event catalog as ``catalog.describe`` publishes it (SPEC §4)."""

    type_pattern = fields.String(required=True)
    terminal_types = fields.List(fields.String(), required=True)
    types = fields.List(fields.Nested(CatalogType), required=True)
