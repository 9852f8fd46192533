"""``GET …/{kind}s/{exec_id}/stream``: parameters, limits, 404/204, then the stream's body (SPEC §5).

The view validates, authenticates, authorizes, decides 404/204 and takes the
stream's slot first; its body (``generator.py``) then gets plain values only
(no ``request``, ``g`` or ``current_user``), flushes its prelude before any
database work, subscribes to the worker's hub, replays from the table and
goes live.
"""

from __future__ import annotations

import functools
import random
import time
import typing as t
from collections.abc import Callable
from types import MappingProxyType

from flask import Blueprint
from flask import Response
from flask import request
from marshmallow import ValidationError

from . import counters
from .auth import refuse_token_in_url
from .auth import stream_reader
from .auth import stream_user
from .direct_writes import client_socket
from .errors import BadRequest
from .errors import DatabaseUnavailable
from .errors import NotFound
from .errors import Unavailable
from .exec_ids import EXEC_ID_PATTERN
from .generator import Plan
from .generator import open_stream
from .inputs import bad_query
from .inputs import kind_of
from .inputs import single_valued_args
from .schemas import StreamQuery
from .schemas import parse_cursor
from .state import current_state
from .storage import Facts
from .storage import ended_at
from .storage import facts_of

if t.TYPE_CHECKING:
    from .config import Settings
    from .slots import Reader
    from .state import State

bp = Blueprint("streamapp_stream", __name__)
# Before anything else, authentication included: a token in the URL is 400 (SPEC §7).
bp.before_request(refuse_token_in_url)

# Built once: a marshmallow Schema costs more to make than to use, on every connect.
_stream_query = StreamQuery()
_NO_QUERY: t.Mapping[str, t.Any] = MappingProxyType(_stream_query.load({}))
HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def _cursor_and_query() -> tuple[int, t.Mapping[str, t.Any]]:
    args = single_valued_args() if request.query_string else {}
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        args.pop("last_event_id", None)  # the header wins (SPEC §5): a browser's own reconnect
    try:
        # Most connects (a browser's reconnect, Last-Event-ID in a header) have no query string.
        query = _stream_query.load(args) if args else _NO_QUERY
    except ValidationError as exc:
        raise bad_query(exc) from None
    if header is not None:
        try:
            return parse_cursor(header), query
        except ValidationError:
            raise BadRequest("Last-Event-ID: must be a non-negative integer below 2^63 in plain digits") from None
    return query["last_event_id"] or 0, query


def counts_outages(view: Callable[..., Response]) -> Callable[..., Response]:
    """Count a 503 for a database outage before the first byte as a refused stream (SPEC §2, §9)."""

    @functools.wraps(view)
    def counted(*args: t.Any, **kwargs: t.Any) -> Response:
        try:
            return view(*args, **kwargs)
        except DatabaseUnavailable:
            counters.stream_refused("unavailable")
            raise

    return counted


def _retry_after(settings: Settings) -> int:
    # Spread the retries of refused clients over a few retry periods.
    return max(1, round(settings.retry_ms / 1000 * random.uniform(1, 3)))


def refuse_when_full(state: State) -> None:
    """Take no new stream on a worker that is shutting down or holds its maximum (SPEC §5.4).

    :raises Unavailable: 503, with a ``Retry-After`` that spreads the retries.
    """
    if state.hub.stopping:
        # A jittered retry lands on a live worker.
        counters.stream_refused("shutdown")
        raise Unavailable("this worker is shutting down; retry", retry_after=random.randint(1, 5))
    if state.hub.slots.open >= state.settings.max_streams_per_worker:
        counters.stream_refused("worker_limit")
        raise Unavailable("this worker holds its maximum of open streams", retry_after=_retry_after(state.settings))


class Admitted(t.NamedTuple):
    """An admitted stream's execution: its facts, its newest id as known, its terminal id if it ended."""

    facts: Facts
    head: int
    terminal_id: int | None


def _admit_followed(state: State, kind: str, exec_id: str, cursor: int, reader: Reader) -> Admitted | None:
    """The execution as this worker's hub knows it, with no round trip at all; ``None``: ask the database.

    Only when the hub streams it and has not seen it end, the default rule lets the reader in, the
    cursor is not past what the hub has read (so not at or past a terminal event: no 204 is due),
    and one of the reader's streams that ended here left a slot to take over (a reconnect, a
    dashboard moving to the next execution).
    """
    followed = state.hub.followed(exec_id) if reader.default_rule else None
    if followed is None:
        return None
    facts, head = followed
    if facts.kind != kind or cursor > head or not reader.sees(facts.owner_id):
        return None  # the database decides: a 404, or a cursor ahead of what the hub has read
    if not state.hub.slots.take_over(reader.user_id):
        return None
    return Admitted(facts, head, None)


def _admit(state: State, kind: str, exec_id: str, cursor: int, user: t.Any, reader: Reader) -> Admitted | None:
    """The execution to stream, with the user's slot held; ``None`` when it ended at ``cursor`` (204).

    One round trip under the default authorization rule, two under a host's
    ``authorize`` hook, which must see the execution before a slot is taken.

    :raises NotFound: unknown or not visible (SPEC §5.4: 404 before 204 before 429).
    :raises TooManyStreams: the user holds their limit of streams (429, SPEC §7).
    """
    if not EXEC_ID_PATTERN.fullmatch(exec_id):
        raise NotFound()  # no stored id breaks the pattern; one with U+0000 would even fail the query
    slots, limit = state.hub.slots, state.settings.max_streams_per_user
    state.hub.start()  # the slot is recorded under this worker's id, which start() makes
    with state.db.autocommit() as cur:
        execution, held = slots.take_on_open(cur, kind, exec_id, cursor, reader, limit)
        # Under the default rule the database took a slot only for whom it lets in, as it says here.
        if execution is None or not state.authorize(user, execution):
            raise NotFound()
        if ended_at(execution, cursor):
            return None  # and no slot was taken
        if not held:
            if reader.default_rule:
                raise slots.refuse(limit)  # the database refused it
            slots.take(cur, reader.user_id, limit)  # a host's hook let the user in
    return Admitted(facts_of(execution), execution["last_event_id"], execution["terminal_event_id"])


@bp.get("/executions/<kind>/<exec_id>/stream")
@counts_outages
def stream(kind: str, exec_id: str) -> Response:
    connected_at = time.monotonic()
    kind_name = kind_of(kind)
    cursor, query = _cursor_and_query()
    user = stream_user(kind_name, exec_id, query["ticket"])
    user_id = str(user.get_id())
    state = current_state()
    settings = state.settings
    refuse_when_full(state)
    reader = stream_reader(user)
    admitted = _admit_followed(state, kind_name, exec_id, cursor, reader) or _admit(
        state, kind_name, exec_id, cursor, user, reader
    )
    if admitted is None:
        # SPEC §5.4: generic SSE clients end cleanly only on an event-stream 204.
        return Response(status=204, content_type="text/event-stream")
    plan = Plan(
        exec_id=exec_id,
        cursor=cursor,
        # A cursor at the head is never stale; any other is checked after the prelude.
        # An ended one's cursor too: retention may have removed its events (SPEC §9).
        newest=admitted.head if cursor != admitted.head else None,
        types=query["events"],
        poll_ms=query["poll_ms"] or settings.poll_ms,
        heartbeat_s=settings.heartbeat_s,
        # Jitter: streams opened together must not all reconnect together.
        lifetime_s=settings.stream_lifetime_s * random.uniform(0.85, 1.0),
        retry_ms=settings.retry_ms,
        user_id=user_id,
        token_prefix=getattr(user, "token_prefix", None),
        facts=admitted.facts,
        connected_at=connected_at,
        client=client_socket(request.environ, settings),
        terminal_id=admitted.terminal_id,
    )
    # The body is bytes already: gunicorn iterates it as it is (StreamBody).
    return Response(
        open_stream(state, plan), status=200, mimetype="text/event-stream", headers=HEADERS, direct_passthrough=True
    )
