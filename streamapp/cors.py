"""CORS for the API and the origin check of the cross-site rule (SPEC §7).

Only origins on the explicit allow-list (``STREAMAPP_CORS_ORIGINS``) get CORS
headers, and only they may send credentials. Under the API prefix:

- a request whose ``Origin`` is listed gets ``Access-Control-Allow-Origin``
  (the origin itself, never ``*``), ``Access-Control-Allow-Credentials:
  true`` and ``Access-Control-Expose-Headers: Retry-After``;
- a preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) from a listed origin answers 204 with
  the methods, headers and max-age below; from any other origin 403 with the
  JSON problem body and no CORS headers;
- any other request from an unlisted origin gets no CORS headers: the
  browser keeps the answer from the page;
- every answer carries ``Vary: Origin`` (when the list is not empty), since
  its CORS headers depend on the request's origin and a shared cache must not
  hand one origin's answer to another.

Origins compare after lowercasing and dropping a default port
(``https://App.example.com:443`` is ``https://app.example.com``); the
opaque origin ``null`` is never allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask
from flask import Response
from flask import current_app
from flask import jsonify
from flask import request

from .errors import Forbidden
from .errors import problem_body

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSE_HEADERS = "Retry-After"
MAX_AGE_S = 600
REFUSED_MESSAGE = "Cross-origin requests from this origin are not allowed."

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """Return the comparable form of an origin: lowercase, no default port, no trailing slash."""
    lowered = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(lowered)
        port = parts.port
    except ValueError:
        # Not a URL (a bad port, say): it can only ever equal itself.
        return lowered
    if parts.scheme in _DEFAULT_PORTS and port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{parts.hostname}"
    return lowered


def allowed_origins(origins: Iterable[str]) -> frozenset[str]:
    """Return the allow-list in comparable form (see :func:`normalize_origin`)."""
    return frozenset(normalize_origin(o) for o in origins if o.strip())


def is_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """Tell whether ``origin`` is on the (normalized) allow-list; ``None`` and ``null`` never are."""
    if not origin or origin.strip().lower() == "null":
        return False
    return normalize_origin(origin) in allowed


def is_preflight(method: str, origin: str | None, requested_method: str | None) -> bool:
    """Tell whether a request is a CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    return method == "OPTIONS" and origin is not None and requested_method is not None


def under_prefix(path: str, url_prefix: str) -> bool:
    """Tell whether ``path`` is ``url_prefix`` or below it (``/api/v0x`` is not below ``/api/v0``)."""
    prefix = url_prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def response_headers(origin: str) -> dict[str, str]:
    """The CORS headers of any answer to an allowed ``origin``."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
    }


def preflight_headers() -> dict[str, str]:
    """The headers a preflight from an allowed origin adds to :func:`response_headers`."""
    return {
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": str(MAX_AGE_S),
    }


def same_or_allowed_origin(origin: str | None, host_url: str, origins: Iterable[str]) -> bool:
    """Tell whether a state-changing request passes the cross-site origin rule (SPEC §7).

    No ``Origin`` header passes (not a browser's cross-site request); an
    origin equal to the service's own (from ``host_url``, e.g.
    ``request.host_url``) or on the allow-list passes; ``null``, an empty
    value and everything else fail.
    """
    if origin is None:
        return True
    if not origin.strip() or origin.strip().lower() == "null":
        return False
    own = urlsplit(host_url)
    if normalize_origin(origin) == normalize_origin(f"{own.scheme}://{own.netloc}"):
        return True
    return is_allowed(origin, allowed_origins(origins))


def init_cors(app: Flask, origins: Iterable[str], url_prefix: str) -> None:
    """Answer preflights and add CORS headers for requests under ``url_prefix`` on ``app``."""
    allowed = allowed_origins(origins)

    def answer_preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None  # before any header is read: this runs on every request
        origin = request.headers.get("Origin")
        requested_method = request.headers.get("Access-Control-Request-Method")
        if not under_prefix(request.path, url_prefix) or not is_preflight(request.method, origin, requested_method):
            return None
        if not is_allowed(origin, allowed):
            refused = jsonify(problem_body(Forbidden.code, REFUSED_MESSAGE))
            refused.status_code = Forbidden.status
            return refused
        # after_request adds the per-origin headers to this answer too.
        return current_app.response_class(status=204, headers=preflight_headers())

    def add_headers(response: Response) -> Response:
        if not allowed or not under_prefix(request.path, url_prefix):
            return response  # no origin is allowed (the default): nothing to add
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is not None and is_allowed(origin, allowed):
            response.headers.update(response_headers(origin))
        return response

    app.before_request(answer_preflight)
    app.after_request(add_headers)
