"""``GET /streams?ids=…``: many executions on one connection, one cursor token (SPEC §5.6).

As ``stream.py`` does for one execution, the view validates, authenticates,
authorizes, decides 404/204 and takes the stream's one slot first; its body
(``multiplex_body.py``) then gets plain values only.
"""

from __future__ import annotations

import random
import time
import typing as t

from flask import Blueprint
from flask import Response
from flask import request
from flask import url_for
from marshmallow import ValidationError

from .auth import refuse_token_in_url
from .auth import stream_reader
from .auth import stream_user
from .auth import visible_executions
from .cursor import CursorInvalid
from .cursor import canonical
from .cursor import list_digest
from .direct_writes import client_socket
from .errors import BadRequest
from .errors import Unavailable
from .inputs import bad_query
from .inputs import single_valued_args
from .multiplex_body import Lane
from .multiplex_body import MultiPlan
from .multiplex_body import open_multiplex
from .schemas import StreamsQuery
from .state import current_state
from .storage import facts_of
from .stream import HEADERS
from .stream import counts_outages
from .stream import refuse_when_full
from .tickets import LIST_KIND

if t.TYPE_CHECKING:
    from .cursor import ListCursor
    from .slots import Reader
    from .state import State

bp = Blueprint("streamapp_multiplex", __name__)
# Before anything else, authentication included: a token in the URL is 400 (SPEC §7).
bp.before_request(refuse_token_in_url)

_streams_query = StreamsQuery()


def _query(max_ids: int) -> t.Mapping[str, t.Any]:
    try:
        query: t.Mapping[str, t.Any] = _streams_query.load(single_valued_args())
    except ValidationError as exc:
        raise bad_query(exc) from None
    if len(query["ids"]) > max_ids:
        raise BadRequest(f"ids: lists {len(query['ids'])} executions; a stream may list at most {max_ids}")
    return query


def _positions(cursor: ListCursor, query: t.Mapping[str, t.Any]) -> list[int]:
    """Every entry's cursor from ``Last-Event-ID`` (which wins) or ``last_event_id``: ``0`` or none
    starts them all from the beginning (SPEC §5.6)."""
    token = request.headers.get("Last-Event-ID", query["last_event_id"])
    if token is None or token == "0":
        return [0] * len(cursor.entries)
    try:
        return cursor.positions(token)
    except CursorInvalid as exc:
        raise BadRequest(f"Last-Event-ID: {exc}; a cursor token holds for the ids list it was sent on") from None


def _admit(state: State, entries: tuple[str, ...], positions: list[int], user: t.Any, reader: Reader) -> list[Lane]:
    """The entries to stream, with the user's one slot held; empty when every one has ended at its
    position (204).

    :raises NotFound: an entry unknown or not visible, which one not said (404 before 204 before 429).
    :raises TooManyStreams: the user holds their limit of streams.
    """
    slots = state.hub.slots
    state.hub.start()  # the slot is recorded under this worker's id, which start() makes
    with state.db.autocommit() as cur:
        executions = visible_executions(cur, entries, user)
        lanes = [
            Lane(index, execution["exec_id"], facts_of(execution), execution["last_event_id"], terminal_id)
            for index, (execution, position) in enumerate(zip(executions, positions, strict=True))
            if (terminal_id := execution["terminal_event_id"]) is None or position < terminal_id
        ]
        if lanes and not slots.take_over(reader.user_id):
            slots.take(cur, reader.user_id, state.settings.max_streams_per_user)
    return lanes


@bp.get("/streams")
@counts_outages
def streams() -> Response:
    connected_at = time.monotonic()
    state = current_state()
    settings = state.settings
    query = _query(settings.max_ids_per_stream)
    entries = canonical(query["ids"])
    cursors = state.cursors
    if cursors is None:
        raise Unavailable("multiplexed streams need SECRET_KEY, and this server has none", retry_after=3600)
    cursor = cursors.for_list(entries)
    positions = _positions(cursor, query)
    renew = url_for("streamapp_api.stream_tickets") + " with these ids"
    user = stream_user(LIST_KIND, list_digest(entries), query["ticket"], renew=renew)
    refuse_when_full(state)
    lanes = _admit(state, entries, positions, user, stream_reader(user))
    if not lanes:
        # Every listed execution's terminal event was delivered (SPEC §5.6): clients stop here.
        return Response(status=204, content_type="text/event-stream")
    plan = MultiPlan(
        entries=entries,
        positions=tuple(positions),
        lanes=tuple(lanes),
        cursor=cursor,
        types=query["events"],
        poll_ms=query["poll_ms"] or settings.poll_ms,
        heartbeat_s=settings.heartbeat_s,
        # Jitter: streams opened together must not all reconnect together.
        lifetime_s=settings.stream_lifetime_s * random.uniform(0.85, 1.0),
        retry_ms=settings.retry_ms,
        user_id=str(user.get_id()),
        token_prefix=getattr(user, "token_prefix", None),
        connected_at=connected_at,
        client=client_socket(request.environ, settings),
    )
    return Response(
        open_multiplex(state, plan), status=200, mimetype="text/event-stream", headers=HEADERS, direct_passthrough=True
    )
