"""Errors and the one place that turns them into problem documents (SPEC §2).

::

    StreamappError
     ├── BadRequest        400
     ├── NotAuthenticated  401
     ├── Forbidden         403
     ├── NotFound          404
     ├── Conflict          409
     ├── TooLarge          413
     ├── Invalid           422
     └── _RetryAfter
          ├── TooManyStreams   429
          ├── TooManyAttempts  429
          └── Unavailable      503
               └── DatabaseUnavailable  503 (PostgreSQL unreachable, restarting or full)
"""

from __future__ import annotations

import typing as t


class StreamappError(Exception):
    """Base of every error streamapp answers with; carries a status and a code."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "Internal server error."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(StreamappError):
    status = 400
    code = "bad_request"
    default_message = "The request is malformed."


class NotAuthenticated(StreamappError):
    status = 401
    code = "not_authenticated"
    default_message = "Authentication required: log in or send 'Authorization: Bearer <token>'."


class Forbidden(StreamappError):
    status = 403
    code = "forbidden"
    default_message = "You may not do this."


class NotFound(StreamappError):
    """Unknown, or not visible to the caller: one message for both (SPEC §5)."""

    status = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(StreamappError):
    status = 409
    code = "conflict"
    default_message = "Conflict."


class TooLarge(StreamappError):
    status = 413
    code = "too_large"
    default_message = "The request is too large."


class Invalid(StreamappError):
    status = 422
    code = "invalid"
    default_message = "The content is invalid."


class _RetryAfter(StreamappError):
    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyStreams(_RetryAfter):
    status = 429
    code = "too_many_streams"
    default_message = "Too many open streams for this user."


class TooManyAttempts(_RetryAfter):
    """Too many failed logins for one account or from one address (SPEC §7)."""

    status = 429
    code = "too_many_attempts"
    default_message = "Too many failed logins; retry later."


class Unavailable(_RetryAfter):
    status = 503
    code = "unavailable"
    default_message = "The service is at capacity; retry later."


class DatabaseUnavailable(Unavailable):
    """PostgreSQL is unreachable, restarting or out of connections (SPEC §2 "Robustness").

    ``db.py`` raises it in place of the driver's error, so every endpoint
    answers 503 with ``Retry-After`` through :func:`problem` and no view needs
    to know about psycopg2. The message says nothing about the server.
    """

    default_message = "The database is unavailable; retry later."


def problem_body(code: str, message: str) -> dict[str, t.Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message}}


def flatten_messages(messages: t.Any, prefix: str = "") -> list[str]:
    """Turn marshmallow's nested ``messages`` into ``field: reason`` lines."""
    if isinstance(messages, dict):
        lines: list[str] = []
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            lines.extend(flatten_messages(value, "" if key == "_schema" and not prefix else name))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {m}" if prefix else m for m in messages]
    if isinstance(messages, list):
        return [line for m in messages for line in flatten_messages(m, prefix)]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


def problem(exc: BaseException) -> tuple[dict[str, t.Any], int, dict[str, str]]:
    """Map an exception to ``(body, status, headers)``; ``None`` status means "not ours".

    Covers our errors, marshmallow ``ValidationError`` (422, naming each field) and
    werkzeug ``HTTPException`` (JSON, never HTML). Anything else is a 500 whose
    message reveals nothing.
    """
    from marshmallow import ValidationError
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, StreamappError):
        return problem_body(exc.code, exc.message), exc.status, exc.headers()
    if isinstance(exc, ValidationError):
        message = "; ".join(flatten_messages(exc.messages)) or "invalid content"
        return problem_body(Invalid.code, message), Invalid.status, {}
    if isinstance(exc, HTTPException) and exc.code == TooLarge.status:
        # One code for "too large", whether werkzeug or the catalog said it.
        return problem_body(TooLarge.code, "The request body is larger than this server accepts."), 413, {}
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        return problem_body(code, exc.description or exc.name), status, headers
    return problem_body("internal_error", "Internal server error."), 500, {}
