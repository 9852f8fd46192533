"""What every view parses: the kind segment, query arguments, the JSON body, the client address (SPEC §2, §7).

A JSON body passes these checks, in this order:

1. size: over ``STREAMAPP_MAX_BODY_BYTES`` → 413, a chunked body too;
2. a cookie-authenticated request must be ``application/json`` and come from
   our own or an allow-listed origin (SPEC §7) → 403;
3. not ``application/json`` → 400;
4. nested deeper than ``STREAMAPP_MAX_JSON_DEPTH`` → 422, found by a linear
   scan of the text before anything recursive sees it, the JSON decoder
   included (:mod:`nesting`; a deep body once cost a RecursionError and a
   138 KB traceback, issue 11);
5. what RFC 8259 does not call JSON — ``NaN``, ``1e999``, a lone surrogate,
   bytes that are not UTF-8, -16 or -32 — → 400.
"""

from __future__ import annotations

import io
import json
import math
import re
import typing as t

from flask import request
from flask_login import current_user
from marshmallow import ValidationError

from . import cors
from . import nesting
from .errors import BadRequest
from .errors import Forbidden
from .errors import Invalid
from .errors import NotFound
from .errors import TooLarge
from .errors import flatten_messages
from .state import current_state

_KIND_SEGMENTS = {"workflows": "workflow", "agents": "agent", "tasks": "task"}
#: A \uD800-\uDFFF escape in a body: the only way a lone surrogate gets past the decoding.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def kind_of(segment: str) -> str:
    """The execution kind named by a URL segment.

    :raises NotFound: an unknown segment.
    """
    kind = _KIND_SEGMENTS.get(segment)
    if kind is None:
        raise NotFound()
    return kind


def single_valued_args() -> dict[str, str]:
    """The query string, one value per name.

    :raises BadRequest: a name given twice, rather than silently using the first.
    """
    for name, values in request.args.lists():
        if len(values) > 1:
            raise BadRequest(f"{name}: given more than once")
    return request.args.to_dict()


def bad_query(exc: ValidationError) -> BadRequest:
    """A query string's validation errors as one 400, naming each parameter."""
    return BadRequest("; ".join(flatten_messages(exc.messages)))


def authenticated_by_cookie() -> bool:
    """Whether this request's user came from the session cookie (not a bearer token)."""
    return bool(current_user.is_authenticated) and getattr(current_user, "token_prefix", None) is None


def refuse_cross_site(*, json_required: bool = True) -> None:
    """Refuse a cookie-authenticated request a cross-site page could forge (SPEC §7).

    It must be ``application/json`` (a form cannot send that without a CORS
    preflight) and an ``Origin`` header, when present, must be ours or
    allow-listed (:func:`cors.same_or_allowed_origin`). This is the one place
    the rule lives: login, logout, every state-changing API call made with the
    session cookie, and — origin only, ``json_required=False`` — the
    stream-ticket request.

    :raises Forbidden: otherwise.
    """
    if json_required and not request.is_json:
        raise Forbidden("state-changing requests must be sent as Content-Type: application/json")
    origin = request.headers.get("Origin")
    if not cors.same_or_allowed_origin(origin, request.host_url, current_state().settings.cors_origins):
        raise Forbidden(f"requests from origin {origin!r} are not allowed")


def require_json_body() -> t.Any:
    """The JSON body of a state-changing request, checked as the module docstring lists.

    :raises TooLarge: a body over ``STREAMAPP_MAX_BODY_BYTES``.
    :raises Forbidden: a cookie-authenticated request that is not JSON or comes from another origin.
    :raises BadRequest: a body that is not JSON.
    :raises Invalid: a body nested deeper than ``STREAMAPP_MAX_JSON_DEPTH``.
    """
    settings = current_state().settings
    request.max_content_length = settings.max_body_bytes
    if request.content_length is None:
        _hold_chunked_body(settings.max_body_bytes)
    if authenticated_by_cookie():
        refuse_cross_site()
    if not request.is_json:
        raise BadRequest("send the body as JSON with Content-Type: application/json")
    return parse_json(request.get_data(cache=True), settings.max_json_depth)


def login_body() -> tuple[str, str]:
    """The ``email`` and ``password`` of a login request, read by :func:`require_json_body`.

    :raises BadRequest: either is missing or not a string, or the email holds U+0000
        (and whatever :func:`require_json_body` raises).
    """
    # The one body parser, with its size and depth limits: the login endpoint is open to anyone.
    body = require_json_body()
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("email"), str)
        or not isinstance(body.get("password"), str)
    ):
        raise BadRequest('send {"email": ..., "password": ...}')
    if "\x00" in body["email"]:
        # No account has one, and PostgreSQL text cannot hold it: refuse before any query.
        raise BadRequest("email must not contain U+0000")
    return body["email"], body["password"]


def _hold_chunked_body(limit: int) -> None:
    """Read a body sent without Content-Length (chunked), refusing it past ``limit``.

    werkzeug cuts such a body off at the limit without a word, and a cut-off
    body that still parsed would be accepted; read one byte more to know.

    :raises TooLarge: a body over ``limit`` (nothing is stored).
    """
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"the request body is over {limit} bytes")
    # Hand werkzeug the body as if it had come with its length.
    request.environ["wsgi.input"] = io.BytesIO(data)
    request.environ["CONTENT_LENGTH"] = str(len(data))


def _not_json(value: str) -> t.NoReturn:
    raise ValueError(f"{value} is not JSON")


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value} is out of range")
    return number


def parse_json(raw: bytes, max_depth: int) -> t.Any:
    """Parse a JSON body as RFC 8259 defines it, no deeper than ``max_depth``.

    Python's decoder also takes ``NaN``, ``Infinity`` and ``1e999``, which,
    stored in an envelope, would reach every client as invalid JSON; and it
    lets surrogates written as UTF-8 bytes through, which the database cannot
    store. Decoding strictly, then checking the depth, then parsing keeps the
    recursive decoder away from anything deeper than the limit.

    :raises BadRequest: for anything that is not valid JSON.
    :raises Invalid: for a body nested deeper than ``max_depth``.
    """
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid JSON: it is not UTF-8 (or UTF-16, UTF-32) text") from None
    if nesting.deeper_than(text, max_depth):
        raise Invalid(
            f"the body is nested deeper than {max_depth} levels of objects and arrays "
            f"(STREAMAPP_MAX_JSON_DEPTH is {max_depth})"
        )
    try:
        body = json.loads(text, parse_constant=_not_json, parse_float=_finite)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("the body holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if body is None:
        raise BadRequest("the body is not valid JSON")
    return body


def client_address() -> str:
    """The client's address: the connecting one, or the one ``STREAMAPP_PROXY_HOPS`` proxies saw.

    With ``proxy_hops`` = N, the N-th address from the right of
    ``X-Forwarded-For`` (the one the outermost of our proxies received the
    connection from), as werkzeug's ``ProxyFix(x_for=N)`` reads it; a shorter
    header is not trusted.
    """
    hops = current_state().settings.proxy_hops
    if hops:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        # Our proxies write addresses; anything unprintable (a NUL fails the query) is not one.
        if len(forwarded) >= hops and forwarded[-hops] and forwarded[-hops].isprintable():
            return forwarded[-hops]
    return request.remote_addr or "unknown"
