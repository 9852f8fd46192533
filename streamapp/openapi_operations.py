"""What each endpoint takes and answers, beside its schemas: the table the OpenAPI document is built from (SPEC §2).

Pure data: :mod:`streamapp.openapi` reads it, keyed by Flask endpoint, and
writes the document; a rule missing here is still documented, bare, and
``tests/test_openapi.py`` fails on it.
"""

from __future__ import annotations

import dataclasses
import typing as t

from marshmallow import Schema

from . import schemas


@dataclasses.dataclass(frozen=True)
class Operation:
    """What one endpoint takes and answers, beside what the schemas say."""

    summary: str
    ok: int
    answer: type[Schema] | None = None
    body: tuple[type[Schema], ...] = ()  # one schema, or several the body is one of
    body_required: bool = True
    query: type[Schema] | None = None
    errors: tuple[int, ...] = (400, 401, 503)
    auth: str = "read"  # read, publish, session, stream, optional, none
    description: str = ""


_WRITE = (400, 401, 403, 404, 409, 413, 422, 503)
#: Keyed by Flask endpoint. A rule missing here is still documented, bare, and tests fail on it.
OPERATIONS: dict[str, Operation] = {
    "streamapp_api.create_execution": Operation(
        "Create an execution",
        201,
        schemas.ExecutionOut,
        (schemas.ExecutionCreate,),
        auth="publish",
        errors=(400, 401, 403, 404, 409, 413, 422, 503),
        description="An `exec_id` in use is 409; `owner` may be set only by an admin's publish token (403).",
    ),
    "streamapp_api.get_execution": Operation(
        "The execution document", 200, schemas.ExecutionOut, errors=(400, 401, 404, 503)
    ),
    "streamapp_api.list_executions": Operation(
        "The caller's executions (an admin's: all), newest first",
        200,
        schemas.ExecutionList,
        query=schemas.ListQuery,
        errors=(400, 401, 404, 503),
    ),
    "streamapp_api.append_events": Operation(
        "Append durable events, all or nothing",
        201,
        schemas.AppendOut,
        (schemas.EventsAppend,),
        auth="publish",
        errors=_WRITE,
        description="After a terminal event 409; a type or data the catalog refuses 422 (SPEC §2, §4).",
    ),
    "streamapp_api.publish_chunks": Operation(
        "Publish best-effort text chunks (never stored)",
        202,
        schemas.ChunksOut,
        (schemas.ChunkText, schemas.ChunkList),
        auth="publish",
        errors=_WRITE,
        description="503 when this server runs without LISTEN/NOTIFY (STREAMAPP_NOTIFY=false).",
    ),
    "streamapp_api.stream_ticket": Operation(
        "A short-lived ticket for this execution's stream",
        201,
        schemas.TicketOut,
        errors=(400, 401, 403, 404, 503),
        description="Pass it as `?ticket=` on the stream until `expires_at` (SPEC §7). No body.",
    ),
    "streamapp_api.stream_tickets": Operation(
        "A short-lived ticket for the multiplexed stream of these executions",
        201,
        schemas.TicketOut,
        (schemas.StreamTicketsIn,),
        errors=(400, 401, 403, 404, 413, 422, 503),
        description="Pass it as `?ticket=` on `GET /streams` with the same `ids`, in any order, until "
        "`expires_at` (SPEC §5.6, §7). Any entry unknown or not visible is 404.",
    ),
    "streamapp_api.cancel_execution": Operation(
        "Cancel an execution",
        200,
        schemas.ExecutionOut,
        (schemas.CancelBody,),
        body_required=False,
        auth="publish",
        errors=_WRITE,
        description="Appends `error` CANCELED; 409 once it has ended.",
    ),
    "streamapp_api.event_catalog": Operation("The event catalog (SPEC §4)", 200, schemas.CatalogOut),
    "streamapp_stream.stream": Operation(
        "Follow an execution as Server-Sent Events (SPEC §5)",
        200,
        query=schemas.StreamQuery,
        errors=(400, 401, 404, 429, 503),
        auth="stream",
        description="The `Last-Event-ID` header wins over `last_event_id`. Frames: `id`, `event`, `data` "
        "(the JSON envelope); `llm_chunk` frames have no `id`.",
    ),
    "streamapp_multiplex.streams": Operation(
        "Follow many executions on one connection as Server-Sent Events (SPEC §5.6)",
        200,
        query=schemas.StreamsQuery,
        errors=(400, 401, 404, 429, 503),
        auth="stream",
        description="Frames carry the JSON envelope, text chunks included; each durable frame's `id` is a "
        "cursor token of every listed execution, for `Last-Event-ID` (which wins over `last_event_id`). "
        "The stream ends once every listed execution's terminal event is sent; a token showing all of them "
        "sent is 204.",
    ),
    "streamapp_auth.login": Operation(
        "Sign in; sets the session cookie",
        200,
        schemas.LoginOut,
        (schemas.LoginIn,),
        auth="none",
        errors=(400, 401, 403, 413, 422, 429, 503),
    ),
    "streamapp_auth.logout": Operation("Sign out", 204, errors=(400, 403, 503), auth="optional"),
    "streamapp_auth.create_token": Operation(
        "Create an API token (the only answer that shows it)",
        201,
        schemas.TokenCreated,
        (schemas.TokenCreate,),
        auth="session",
        errors=(400, 401, 403, 413, 422, 503),
    ),
    "streamapp_auth.list_tokens": Operation("The caller's tokens, never their secrets", 200, schemas.TokenList),
    "streamapp_auth.revoke_token": Operation(
        "Revoke a token by its prefix", 204, auth="publish", errors=(400, 401, 403, 404, 503)
    ),
    "streamapp_openapi.openapi_document": Operation("This document", 200, errors=(400,), auth="none"),
}

#: Each error status: the name of its shared response and what it means here.
ERRORS = {
    400: ("BadRequest", "Bad parameters, or a body that is not JSON."),
    401: ("NotAuthenticated", "Not authenticated, or a bad or expired stream ticket."),
    403: ("Forbidden", "Missing scope, or a refused cross-site request (SPEC §7)."),
    404: ("NotFound", "Unknown, or not visible to the caller (the same body for both)."),
    409: ("Conflict", "Conflict: an exec_id in use, or an execution that has ended."),
    413: ("TooLarge", "The body, or one event's data, is too large."),
    422: ("Invalid", "Invalid content, or a body nested too deep."),
    429: ("TooManyRequests", "A per-user limit; retry after Retry-After seconds."),
    503: ("Unavailable", "At capacity, shutting down, or the database is unavailable; retry after Retry-After."),
}
PATH_PARAMETERS: dict[str, dict[str, t.Any]] = {
    "kind": {"schema": {"type": "string", "enum": ["workflows", "agents", "tasks"]}},
    "exec_id": {"schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}},
    "prefix": {"schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}, "description": "the token's prefix"},
}
QUERY_DOCS = {
    "last_event_id": "resume after this id, or this cursor token on /streams (a new EventSource cannot set "
    "Last-Event-ID)",
    "ids": "comma-separated segment/exec_id entries, e.g. workflows/a,agents/b",
    "events": "comma-separated event types to send; terminal events are always sent",
    "poll_ms": "the longest the stream may lag behind the table when notifications are lost",
    "ticket": "a stream ticket from POST …/stream-ticket",
    "limit": "page size",
    "cursor": "next_cursor of the previous page",
}
