"""One GET of an execution's stream over ``http.client``: redirects, refusals, ``Retry-After`` (SPEC §6).

Standard library only, as the rest of the client. A redirect to another
origin drops the ``Authorization`` header (``urllib.request`` would keep it).
Failures worth another attempt raise :class:`Retryable`, which ``follow``
catches; refusals raise the :mod:`streamapp.client_errors` classes.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import time
import typing as t
import urllib.parse

from .client_errors import BY_STATUS
from .client_errors import ProtocolError
from .client_errors import StatusError

if t.TYPE_CHECKING:
    from collections.abc import Iterator

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5


class Retryable(Exception):
    """A failure worth another attempt: connection errors, 5xx, 429, 503; ``follow`` never lets it out."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


@contextlib.contextmanager
def open_stream(
    url: str, headers: dict[str, str], timeouts: tuple[float, float], cursor: int | str | None
) -> Iterator[http.client.HTTPResponse]:
    """A 200 event stream or a 204, following redirects; the connection is closed on exit.

    :raises Retryable: connection errors, 5xx, 429 and 503 (with their ``Retry-After``).
    :raises StatusError: other refusals.
    """
    origin = _origin(urllib.parse.urlsplit(url))
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if _origin(parts) != origin:
            # Never hand the token to another host, or over plain http after https.
            headers = {k: v for k, v in headers.items() if k != "Authorization"}
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(t.cast(str, parts.hostname), parts.port, timeout=timeouts[0])
        try:
            try:
                conn.connect()
                t.cast(t.Any, conn.sock).settimeout(timeouts[1])
                target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Retryable(describe(exc, "no answer in time")) from exc
            if response.status in _REDIRECTS:
                url = _redirect(url, response, cursor)
                continue
            if response.status not in (200, 204):
                raise _refusal(response, cursor)
            content_type = response.getheader("Content-Type") or ""
            if response.status == 200 and not content_type.startswith("text/event-stream"):
                raise ProtocolError(f"expected text/event-stream, got {content_type[:80]!r}", cursor)
            yield response
            return
        finally:
            conn.close()
    raise ProtocolError(f"more than {_MAX_REDIRECTS} redirects", cursor)


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str | None, int | None]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, parts.port or default


def _redirect(url: str, response: http.client.HTTPResponse, cursor: int | str | None) -> str:
    location = response.getheader("Location")
    target = urllib.parse.urljoin(url, location or "")
    if not location or urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        raise ProtocolError(f"HTTP {response.status} without an http(s) Location", cursor)
    return target


def _refusal(response: http.client.HTTPResponse, cursor: int | str | None) -> Exception:
    """The exception for a status that is not 200, 204 or a redirect."""
    status = response.status
    try:
        body = json.loads(response.read(65536))
        problem = body["error"]
        code, message = str(problem["code"]), str(problem["message"])[:500]
    except (OSError, http.client.HTTPException, ValueError, RecursionError, KeyError, TypeError):
        code, message = "http_error", response.reason or "no problem document"
    if status in (408, 429) or status >= 500:
        return Retryable(f"HTTP {status} {code}", _retry_after(response.getheader("Retry-After")))
    return BY_STATUS.get(status, StatusError)(status, code, message, cursor)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def describe(exc: BaseException, timed_out: str) -> str:
    if isinstance(exc, TimeoutError):
        return timed_out
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection broke mid-stream"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
