"""Follow one execution's stream from Python: ``follow(url, …)`` yields its events (SPEC §6).

A ``…/streams?ids=…`` URL follows every listed execution on one connection
(SPEC §5.6): events are de-duplicated per execution, the cursor is the
server's opaque token (a ``str``), and ``follow`` returns once every listed
execution has sent its terminal event.

``follow`` reconnects with ``Last-Event-ID`` after connection errors, 5xx, 429/503
and a server-side end without a terminal event (lifetime, shutdown: SPEC §5.4),
honours ``retry:`` and ``Retry-After`` with capped exponential back-off and
jitter, drops durable events it has already yielded (id ≤ the last one seen),
passes text chunks (``llm_chunk``, no ``id:``) through as their own event type,
and returns after ``complete`` or ``error`` without another round trip.

The HTTP layer (:mod:`streamapp.client_http`) is the standard library's
``http.client``, so a client-only install (``pip install streamapp`` without
the ``server`` extra) needs nothing else (SPEC §6). One GET whose body is read
as it arrives, its status and three headers is all a stream needs.
``urllib.request`` is not used because it follows redirects by itself and
keeps the ``Authorization`` header when the host changes; here a redirect to
another origin drops the token.

Exceptions (:mod:`streamapp.client_errors`, all importable from here)::

    FollowError                    anything follow() raises; .last_id: where to resume
     ├── StatusError               refused, and retrying would not help; .status .code .message
     │    ├── BadRequestError      400  bad cursor or filter, a token in the URL
     │    ├── AuthenticationError  401  no, wrong or revoked token; expired ticket
     │    ├── ForbiddenError       403
     │    └── NotFoundError        404  unknown execution, or not visible to this token
     ├── UnavailableError          no stream for max_wait seconds of continuous failure
     │                             (connection errors, 5xx, 429/503); .reason
     └── ProtocolError             the answer is not an event stream of one execution

Bad arguments raise ``ValueError`` when ``follow`` is called, before any I/O.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import re
import time
import typing as t
import urllib.parse

from . import sse
from .client_errors import AuthenticationError
from .client_errors import BadRequestError
from .client_errors import FollowError
from .client_errors import ForbiddenError
from .client_errors import NotFoundError
from .client_errors import ProtocolError
from .client_errors import StatusError
from .client_errors import UnavailableError
from .client_http import Retryable
from .client_http import describe
from .client_http import open_stream

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Generator
    from collections.abc import Iterable
    from collections.abc import Iterator

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Event",
    "FollowError",
    "ForbiddenError",
    "NotFoundError",
    "ProtocolError",
    "Status",
    "StatusError",
    "TERMINAL",
    "UnavailableError",
    "follow",
]

#: Event types after which an execution's stream is over (SPEC §4).
TERMINAL = frozenset({"complete", "error"})
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # SPEC §2: the event type pattern
_DIGITS = re.compile(r"[0-9]{1,19}")
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,1024}")  # SPEC §5.6: a multiplexed stream's cursor token
_CHUNK = 65536
_DEFAULT_RETRY_S = 1.0  # until the server's `retry:` arrives
_MIN_BACKOFF_S = 0.1  # a `retry: 0` must not turn failures into a busy loop
_NOT_JSON = object()


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event of the stream.

    ``data`` is the envelope's ``data`` for JSON frames, the text itself for a
    text-mode ``llm_chunk`` (then ``envelope`` is None), and the parsed JSON of
    frames that are not envelopes (``stream_reset``).
    """

    type: str
    id: int | None  # None for text chunks: they are not durable (SPEC §5.2)
    data: t.Any
    envelope: dict[str, t.Any] | None = None
    #: On a multiplexed stream, the frame's cursor token: ``last_event_id`` resumes after it.
    token: str | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    @property
    def exec_id(self) -> str | None:
        """The execution the event belongs to, as its envelope (or a multiplexed reset) names it."""
        named = self.envelope if self.envelope is not None else self.data
        value = named.get("exec_id") if isinstance(named, dict) else None
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        """The text of an ``llm_chunk``, in text or JSON mode; None for other events."""
        if self.type != "llm_chunk":
            return None
        content = self.data.get("content") if isinstance(self.data, dict) else self.data
        return content if isinstance(content, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """The connection's state, reported to ``on_status``: connecting, open, reconnecting, closed."""

    state: str
    last_id: int | str | None  # a cursor token (str) on a multiplexed stream
    reason: str | None = None  # why it is reconnecting
    delay: float | None = None  # seconds until the next attempt
    retry_after: float | None = None  # what the server's Retry-After asked for, if it sent one


def follow(
    url: str,
    *,
    token: str | None = None,
    last_event_id: int | str | None = None,
    events: Iterable[str] | str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 45.0,
    max_wait: float | None = 60.0,
    max_delay: float = 30.0,
    on_status: Callable[[Status], None] | None = None,
) -> Iterator[Event]:
    """Yield the events of the execution streamed at ``url`` until its terminal event.

    ``events`` (names, or one comma-separated string) keeps only those types, terminal
    events always included (SPEC §5). ``read_timeout`` must exceed two heartbeats
    (15 s each by default, SPEC §5.3): ``: ping`` comments are what keep a quiet
    stream from timing out. ``max_wait`` (None: forever) bounds continuous failure;
    ``max_delay`` caps the back-off before jitter. ``on_status`` gets a ``Status``
    at each change of connection state. The generator closes its connection when it
    ends or is closed. A ``204`` (the execution ended at or before the cursor) ends
    it with no event. On a multiplexed stream ``last_event_id`` is a cursor token (``Status.last_id``,
    ``FollowError.last_id``) and ``follow`` ends once every listed execution has ended.

    :raises ValueError: at once, for a bad argument.
    :raises StatusError: 400, 401, 403, 404 and other refusals; never retried.
    :raises UnavailableError: after ``max_wait`` seconds of continuous failure.
    :raises ProtocolError: the server does not answer with an event stream.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    listed = _listed(parts)
    if isinstance(last_event_id, str) and (not listed or not _TOKEN.fullmatch(last_event_id)):
        raise ValueError("last_event_id: a cursor token only resumes a multiplexed stream (…/streams?ids=…)")
    if isinstance(last_event_id, int) and not (0 <= last_event_id < 2**63):
        raise ValueError("last_event_id must be a non-negative integer below 2**63")
    if token is not None and (not token or any(c in token for c in "\r\n\0")):
        raise ValueError("token must be a non-empty string without CR, LF or NUL")
    if min(connect_timeout, read_timeout, max_delay) <= 0 or (max_wait is not None and max_wait < 0):
        raise ValueError("timeouts and max_delay must be positive, max_wait non-negative")
    if events is not None:
        names = events.split(",") if isinstance(events, str) else list(events)
        bad = [name for name in names if not _TYPE.fullmatch(name)]
        if bad or not names:
            raise ValueError(f"events: not event type names: {bad or names}")
        url = _with_query(parts, "events", ",".join(names))
    follower = _Follower(url, token, last_event_id, (connect_timeout, read_timeout), max_wait, max_delay, on_status)
    follower.listed = listed
    return follower.run()


def _listed(parts: urllib.parse.SplitResult) -> int:
    """How many executions a multiplexed stream's URL lists (SPEC §5.6); 0 for one execution's stream."""
    if not parts.path.endswith("/streams"):
        return 0
    ids = dict(urllib.parse.parse_qsl(parts.query)).get("ids", "")
    return len(ids.split(",")) if ids else 0


def _with_query(parts: urllib.parse.SplitResult, name: str, value: str) -> str:
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != name]
    query.append((name, value))
    return parts._replace(query=urllib.parse.urlencode(query, safe=",")).geturl()


class _Follower:
    """The state one ``follow`` call carries across connections."""

    def __init__(
        self,
        url: str,
        token: str | None,
        cursor: int | str | None,
        timeouts: tuple[float, float],
        max_wait: float | None,
        max_delay: float,
        on_status: Callable[[Status], None] | None,
    ) -> None:
        self.url, self.token, self.cursor, self.timeouts = url, token, cursor, timeouts
        self.max_wait, self.max_delay, self.on_status = max_wait, max_delay, on_status
        #: On a multiplexed stream: how many executions it lists, the newest id yielded of each,
        #: and those whose terminal event was yielded.
        self.listed = 0
        self.newest: dict[str, int] = {}
        self.ended: set[str] = set()
        self.retry_s = _DEFAULT_RETRY_S
        self.failures = 0
        self.failing_since: float | None = None

    def run(self) -> Generator[Event, None, None]:
        while True:
            self._report("connecting")
            try:
                over = yield from self._connection()
            except Retryable as problem:
                reason, delay, retry_after = problem.reason, self._after_failure(problem), problem.retry_after
            else:
                if over:
                    self._report("closed")
                    return
                # A healthy stream the server ended (lifetime, shutdown): resume after `retry:`.
                reason, delay, retry_after = "the server ended the stream", self._backoff(self.retry_s, 0), None
            self._report("reconnecting", reason, delay, retry_after)
            time.sleep(delay)

    def _connection(self) -> Generator[Event, None, bool]:
        """One connection's events; True once nothing more will come (terminal event or 204)."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", "User-Agent": "streamapp-client"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.cursor is not None:
            headers["Last-Event-ID"] = str(self.cursor)
        with open_stream(self.url, headers, self.timeouts, self.cursor) as response:
            if response.status == 204:
                return True
            self._report("open")
            decoder, alive = sse.Decoder(), False
            while True:
                try:
                    chunk = response.read1(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise Retryable(describe(exc, f"no data for {self.timeouts[1]:g} s")) from exc
                if not chunk:
                    if not alive:  # e.g. a proxy that answers 200 and hangs up
                        raise Retryable("the stream ended before its first line")
                    return False
                for item in decoder.feed(chunk):
                    if not alive:
                        alive, self.failures, self.failing_since = True, 0, None
                    if isinstance(item, sse.Retry):
                        self.retry_s = item.ms / 1000
                    elif isinstance(item, sse.Message):
                        event = self._accept(item)
                        if event is not None and self._over(event):
                            response.close()  # SPEC §5.4: no round trip for the 204
                            yield event
                            return True
                        if event is not None:
                            yield event

    def _over(self, event: Event) -> bool:
        """Whether nothing more will come after ``event``: its terminal event, or every listed one's."""
        return len(self.ended) >= self.listed if self.listed else event.terminal

    def _accept(self, message: sse.Message) -> Event | None:
        """The event to yield, or None for a durable event already yielded."""
        if message.id is None:
            # Text chunks carry no `id:`; the id they inherit is not theirs to de-duplicate by.
            return _event(message, None)
        if self.listed:
            return self._accept_listed(message)
        if not _DIGITS.fullmatch(message.id):
            raise ProtocolError(f"event id {message.id[:40]!r} is not an execution's event id", self.cursor)
        event_id = int(message.id)
        if message.type != "stream_reset" and isinstance(self.cursor, int) and event_id <= self.cursor:
            return None
        # SPEC §5.5: a reset moves the cursor back to its id; replay follows from there.
        self.cursor = event_id
        return _event(message, event_id)

    def _accept_listed(self, message: sse.Message) -> Event | None:
        """:meth:`_accept` on a multiplexed stream: the id is a cursor token, events count per execution."""
        if not _TOKEN.fullmatch(t.cast(str, message.id)):
            raise ProtocolError(f"event id {str(message.id)[:40]!r} is not a cursor token", self.cursor)
        event = dataclasses.replace(_event(message, None), token=message.id)
        exec_id = event.exec_id
        if exec_id is None:
            raise ProtocolError(f"a {message.type!r} frame that names no execution", self.cursor)
        self.cursor = message.id
        if message.type == "stream_reset":
            # SPEC §5.5/§5.6: that execution restarts after the oldest event held, or at its newest.
            oldest, newest = event.data.get("oldest_id", 0), event.data.get("newest_id", 0)
            self.newest[exec_id] = oldest - 1 if oldest > 0 else newest
            if event.data.get("reason") == "cursor_expired" and oldest == 0:
                self.ended.add(exec_id)  # pruned to its terminal event: nothing more will come
            return event
        event_id = event.envelope.get("id") if event.envelope is not None else None
        if not isinstance(event_id, int):
            raise ProtocolError(f"a {message.type!r} frame that is no event envelope", self.cursor)
        if event_id <= self.newest.get(exec_id, 0):
            return None
        self.newest[exec_id] = event_id
        if event.terminal:
            self.ended.add(exec_id)
        return dataclasses.replace(event, id=event_id)

    def _after_failure(self, problem: Retryable) -> float:
        """The wait before the next attempt.

        :raises UnavailableError: when the next attempt could not start within ``max_wait``.
        """
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        delay = max(self._backoff(max(self.retry_s, _MIN_BACKOFF_S), self.failures), problem.retry_after or 0.0)
        self.failures += 1
        if self.max_wait is not None:
            left = self.failing_since + self.max_wait - now
            if left <= 0 or (problem.retry_after or 0.0) > left:
                raise UnavailableError(problem.reason, now - self.failing_since, self.cursor)
            delay = min(delay, left)  # one last try at the deadline
        return delay

    def _backoff(self, base: float, failures: int) -> float:
        return min(self.max_delay, base * 2.0**failures) * random.uniform(1.0, 1.25)

    def _report(self, state: str, *details: t.Any) -> None:
        if self.on_status is not None:
            self.on_status(Status(state, self.cursor, *details))


def _event(message: sse.Message, event_id: int | None) -> Event:
    try:
        parsed = json.loads(message.data)
    except (ValueError, RecursionError):
        parsed = _NOT_JSON
    if isinstance(parsed, dict) and parsed.get("type") == message.type and "data" in parsed:
        return Event(message.type, event_id, parsed["data"], parsed)
    if message.type == "llm_chunk" or parsed is _NOT_JSON:
        return Event(message.type, event_id, message.data)  # text mode: the text as it is
    return Event(message.type, event_id, parsed)
