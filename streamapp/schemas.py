"""marshmallow schemas for request bodies, query strings and response documents."""

from __future__ import annotations

import re
import typing as t

from marshmallow import RAISE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate

from .catalog import TYPE_PATTERN

_DIGITS = re.compile(r"[0-9]+")  # not \d: it matches every script's digits
#: Cursors are PostgreSQL bigints: any value below 2^63 (SPEC §5), so 19 digits past leading zeros.
CURSOR_LIMIT = 2**63
_EXEC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _storable(value: t.Any) -> None:
    """PostgreSQL's text and jsonb cannot hold U+0000: refuse it (422), do not fail at insert (500)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValidationError("must not contain the character U+0000")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


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
        validate=validate.Regexp(_EXEC_ID, error="must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"),
    )
    owner = fields.String(load_default=None, validate=[validate.Length(min=1, max=254), _storable])


class EventsAppend(_Strict):
    events = fields.List(
        fields.Raw(), required=True, validate=validate.Length(min=1, max=1000, error="must hold 1 to 1000 events")
    )


class CursorField(fields.Field):
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


class TypeList(fields.Field):
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


def parse_cursor(value: str) -> int:
    """Parse a ``Last-Event-ID`` header value.

    :raises ValidationError: unless it is a non-negative integer below 2^63.
    """
    return t.cast(int, CursorField().deserialize(value))


class CancelBody(_Strict):
    """The optional body of ``POST …/cancel`` (SPEC §2): the reason becomes the error's message."""

    reason = fields.String(load_default=None, validate=[validate.Length(min=1, max=1000), _storable])
