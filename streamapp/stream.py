"""``GET …/{kind}s/{exec_id}/stream``: parameters, 204, prelude, replay, live (SPEC §5).

The view validates, authenticates, authorizes and decides 404/204 first; the
generator then gets plain values only (no ``request``, ``g`` or
``current_user``), flushes its prelude before any database work, subscribes
to the worker's hub, replays from the table and goes live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import random
import socket
import struct
import termios
import time
import typing as t
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator

import gevent
import psycopg2
from flask import Blueprint
from flask import Response
from flask import request
from marshmallow import ValidationError

from . import catalog
from . import counters
from . import framing
from . import logs
from . import slots
from . import storage
from .auth import refuse_token_in_url
from .auth import stream_user
from .auth import visible_execution
from .errors import BadRequest
from .errors import DatabaseUnavailable
from .errors import TooManyStreams
from .errors import Unavailable
from .inputs import bad_query
from .inputs import kind_of
from .inputs import single_valued_args
from .schemas import StreamQuery
from .schemas import parse_cursor
from .state import State
from .state import current_state

if t.TYPE_CHECKING:
    from .subscriber import Item
    from .subscriber import Subscriber

log = logging.getLogger(__name__)
bp = Blueprint("streamapp_stream", __name__)
# Before anything else, authentication included: a token in the URL is 400 (SPEC §7).
bp.before_request(refuse_token_in_url)

REPLAY_PAGE = 5000
# Built once: a marshmallow Schema costs more to make than to use, on every connect.
_stream_query = StreamQuery()
HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a stream generator needs, as plain values."""

    exec_id: str
    cursor: int
    newest: int | None  # the execution's newest id when the cursor must be checked for a reset
    types: frozenset[str] | None
    poll_ms: int
    heartbeat_s: float
    lifetime_s: float
    retry_ms: int
    user_id: str
    token_prefix: str | None
    text_mode: bool
    kind: str
    connected_at: float  # time.monotonic() when the request reached the view
    socket: t.Any = None  # set when frames may be written straight to it (see Subscriber.try_write)
    client: t.Any = None  # the client's socket, watched for a hang-up (see _hangup_watch)
    chunked: bool = True
    terminal_id: int | None = None  # an ended execution's terminal id: the replay ends there, pruned or not


def _cursor_and_query() -> tuple[int, dict[str, t.Any]]:
    args = single_valued_args()
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        args.pop("last_event_id", None)  # the header wins (SPEC §5): a browser's own reconnect
    try:
        query = _stream_query.load(args)
    except ValidationError as exc:
        raise bad_query(exc) from None
    if header is not None:
        try:
            return parse_cursor(header), query
        except ValidationError:
            raise BadRequest("Last-Event-ID: must be a non-negative integer below 2^63 in plain digits") from None
    return query["last_event_id"] or 0, query


def _reset_frame(cursor: int, newest: int, oldest: int | None) -> tuple[bytes | None, int]:
    """The ``stream_reset`` frame and the cursor to replay from, when the cursor is unusable."""
    held_from = oldest if oldest is not None else newest + 1
    if cursor > newest:
        reason = "cursor_ahead"
    elif cursor < held_from - 1:  # retention removed events after the cursor, maybe all of them
        reason = "cursor_expired"
    else:
        return None, cursor
    data = json.dumps({"reason": reason, "newest_id": newest, "oldest_id": oldest or 0})
    return framing.event_frame(held_from - 1, "stream_reset", data), held_from - 1


def _counts_outages(view: Callable[..., Response]) -> Callable[..., Response]:
    """Count a 503 for a database outage before the first byte as a refused stream (SPEC §2, §9)."""

    @functools.wraps(view)
    def counted(*args: t.Any, **kwargs: t.Any) -> Response:
        try:
            return view(*args, **kwargs)
        except DatabaseUnavailable:
            counters.stream_refused("unavailable")
            raise

    return counted


@bp.get("/executions/<kind>/<exec_id>/stream")
@_counts_outages
def stream(kind: str, exec_id: str) -> Response:
    connected_at = time.monotonic()
    kind_name = kind_of(kind)
    cursor, query = _cursor_and_query()
    user = stream_user(kind_name, exec_id, query["ticket"])
    user_id = str(user.get_id())
    state = current_state()
    settings = state.settings
    if state.hub.stopping:
        # SPEC §5.4: a worker shutting down takes no new stream; the jittered retry lands on a live one.
        counters.stream_refused("shutdown")
        raise Unavailable("this worker is shutting down; retry", retry_after=random.randint(1, 5))
    if state.hub.open_streams >= settings.max_streams_per_worker:
        counters.stream_refused("worker_limit")
        raise Unavailable("this worker holds its maximum of open streams", retry_after=_retry_after(settings))
    with state.db.autocommit() as cur:
        execution = visible_execution(cur, kind_name, exec_id, user)
        terminal_id = execution["terminal_event_id"]
        if terminal_id is not None and cursor >= terminal_id:
            # SPEC §5.4: generic SSE clients end cleanly only on an event-stream 204.
            return Response(status=204, content_type="text/event-stream")
        state.hub.start()  # the slot is recorded under this worker's id, which start() makes
        _take_slot(cur, state, user_id)
    plan = Plan(
        exec_id=exec_id,
        cursor=cursor,
        # A cursor at the head is never stale; any other is checked after the prelude.
        # An ended one's cursor too: retention may have removed its events (SPEC §9).
        newest=execution["last_event_id"] if cursor != execution["last_event_id"] else None,
        types=query["events"],
        poll_ms=query["poll_ms"] or settings.poll_ms,
        heartbeat_s=settings.heartbeat_s,
        # Jitter: streams opened together must not all reconnect together.
        lifetime_s=settings.stream_lifetime_s * random.uniform(0.85, 1.0),
        retry_ms=settings.retry_ms,
        user_id=user_id,
        token_prefix=getattr(user, "token_prefix", None),
        text_mode=kind_name != "workflow" and execution["output_schema"] is None,
        kind=kind_name,
        connected_at=connected_at,
        terminal_id=terminal_id,
    )
    plan = dataclasses.replace(plan, **_direct_socket(request.environ, settings))
    state.hub.open_streams += 1
    counters.stream_opened(kind_name)
    ending = _Ending(last=cursor)
    release = _once(lambda: _end(state, plan, ending))
    response = Response(
        _generate(state, plan, ending, release), status=200, mimetype="text/event-stream", headers=HEADERS
    )
    response.call_on_close(release)  # the generator gives the slot back; this, if it never ran
    return response


@dataclasses.dataclass
class _Ending:
    """How a stream ended, for its one log record (SPEC §9); its generator fills it in."""

    reason: str = "client_gone"  # the generator never ran: the client left before the first byte
    sent: int = 0
    last: int = 0


def _end(state: State, plan: Plan, ending: _Ending) -> None:
    """Give the stream's slot back, then log its end: once per stream, whichever way it ended."""
    _release(state, plan.user_id, plan.kind, plan.connected_at)
    logs.structured(
        log,
        logging.INFO,
        "stream ended",
        exec_id=plan.exec_id,
        kind=plan.kind,
        user_id=plan.user_id,
        duration_s=round(time.monotonic() - plan.connected_at, 3),
        events_sent=ending.sent,
        last_id=ending.last,
        reason=ending.reason,
    )


def _once(call: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            call()

    return once


def _retry_after(settings: t.Any) -> int:
    # Spread the retries of refused clients over a few retry periods.
    return max(1, round(settings.retry_ms / 1000 * random.uniform(1, 3)))


def _take_slot(cur: t.Any, state: State, user_id: str) -> None:
    """Count the caller's stream toward their limit, across workers.

    The hub counts it first and forgets it last, so a maintenance round
    running meanwhile errs on the side of one stream too many, never too few.

    :raises TooManyStreams: the user holds ``max_streams_per_user`` streams already.
    """
    stale = slots.stale_after(state.hub.maintenance_s)
    state.hub.hold_slot(user_id)
    try:
        taken = slots.take(cur, user_id, state.hub.worker_id, state.settings.max_streams_per_user, stale)
    except BaseException:
        state.hub.release_slot(user_id)
        raise
    if not taken:
        state.hub.release_slot(user_id)
        counters.stream_refused("user_limit")
        # Retry-After 1: a stream the user closes gives its slot back at once (SPEC §5).
        raise TooManyStreams(
            f"you have {state.settings.max_streams_per_user} streams open; close one or retry later",
            retry_after=1,
        )


def _release(state: State, user_id: str, kind: str, connected_at: float) -> None:
    state.hub.open_streams -= 1
    counters.stream_closed(kind, time.monotonic() - connected_at)
    try:
        with state.db.autocommit() as cur:
            slots.give_back(cur, user_id, state.hub.worker_id)
    except DatabaseUnavailable:
        pass  # an outage, logged once by the pool; the hub's next round writes the true count
    except psycopg2.Error:
        # The hub's next maintenance round writes the true count.
        log.warning("could not count a closed stream off; the hub corrects it")
    finally:
        state.hub.release_slot(user_id)


def _direct_socket(environ: dict[str, t.Any], settings: t.Any) -> dict[str, t.Any]:
    """The client socket, if live frames may bypass the WSGI server's writer.

    Only plain HTTP/1.x on gunicorn, where the framing is known: chunked for
    HTTP/1.1, raw for HTTP/1.0. Anything else keeps the generator path.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return {}
    # A client that stops reading blocks our writes; a socket timeout ends it
    # instead of letting its frames pile up (issue 4).
    sock.settimeout(settings.send_timeout_s)
    protocol = environ.get("SERVER_PROTOCOL")
    if (
        not settings.direct_writes
        or environ.get("wsgi.url_scheme") != "http"
        or protocol not in ("HTTP/1.0", "HTTP/1.1")
    ):
        return {"client": sock}
    return {"client": sock, "socket": sock, "chunked": protocol == "HTTP/1.1"}


@contextlib.contextmanager
def _hangup_watch(sock: t.Any, sub: Subscriber) -> Iterator[None]:
    """End the stream as soon as its client hangs up, not at the next heartbeat.

    A closed stream gives its user's slot back at once (SPEC §5), so the
    server must notice the close. An SSE client sends nothing after its
    request: the socket turning readable with no byte to read is its FIN or
    RST. One libev watcher, no greenlet. A client that vanishes without
    either is noticed when a write (a heartbeat at the latest) fails.
    """
    if sock is None:
        yield
        return
    fd = sock.fileno()
    watcher = gevent.get_hub().loop.io(fd, 1)  # 1: readable

    def readable() -> None:
        watcher.stop()  # level-triggered: stop first; a client that sent bytes is left alone
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        if struct.unpack("i", waiting)[0] == 0:
            sub.close("client_gone")

    watcher.start(readable)
    try:
        yield
    finally:
        watcher.stop()
        watcher.close()


def _wanted(plan: Plan, type_name: str) -> bool:
    return plan.types is None or type_name in plan.types or type_name in catalog.TERMINAL_TYPES


Framed = tuple[list[bytes], int, bool, dict[str, int]]


def _frames(plan: Plan, items: t.Iterable[Item], last: int) -> Framed:
    """Frames for items after ``last``, the new cursor, whether a terminal event was met,
    and how many frames of each type (counted once the batch is written)."""
    out: list[bytes] = []
    types: dict[str, int] = {}
    for event_id, type_name, frame in items:
        if event_id is None:  # a text chunk: no id, never moves the cursor
            if _wanted(plan, type_name):
                out.append(frame)
                types[type_name] = types.get(type_name, 0) + 1
            continue
        if event_id <= last:
            continue  # already sent: replay and live overlap by design
        last = event_id
        if _wanted(plan, type_name):
            out.append(frame)
            types[type_name] = types.get(type_name, 0) + 1
        if type_name in catalog.TERMINAL_TYPES:
            return out, last, True, types
    return out, last, False, types


def _written(sub: Subscriber, types: dict[str, int]) -> None:
    """Count a batch the generator wrote (its ``yield`` returned): per type, not per event (SPEC §9)."""
    counters.events_sent(types)
    sub.wrote(sum(types.values()))


def _unsent(sock: t.Any) -> bool:
    """Whether the client's socket still holds bytes it has not taken: a client that stopped reading."""
    if sock is None:
        return False
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on a socket
    except OSError:
        return False
    return bool(struct.unpack("i", queued)[0])


def _replay(
    state: State, plan: Plan, sub: Subscriber, last: int, newest: int | None = None
) -> Generator[bytes, None, tuple[int, bool]]:
    """Send the table from ``last`` on, page by page; return the new cursor and whether it ended.

    With ``newest`` (a cursor behind the head), the first page also tells
    whether retention removed events after the cursor: the oldest held one
    is then not ``last + 1``, and a ``stream_reset`` goes first (SPEC §5).
    """
    while True:
        # The cap covers the read, not the client's pace: a slow reader holds no slot.
        with state.hub.replays, state.db.autocommit() as cur:
            items, more = storage.frames_after(cur, plan.exec_id, last, REPLAY_PAGE)
        if newest is not None:
            reset, last = _reset_frame(last, newest, items[0][0] if items else None)
            if reset:
                yield reset
            newest = None
        frames, last, ended, types = _frames(plan, items, last)
        if frames:
            yield b"".join(frames)
            _written(sub, types)
        sub.last = max(sub.last, last)  # for the end record, should the client leave now
        if ended or not more or sub.closing:
            return last, ended


def _generate(state: State, plan: Plan, ending: _Ending, release: Callable[[], None]) -> Iterator[bytes]:
    yield framing.prelude(plan.retry_ms)
    ending.reason = "error"  # unless one of the ways out below says otherwise
    hub = state.hub
    sub = hub.subscribe(
        plan.exec_id, plan.poll_ms, user_id=plan.user_id, token_prefix=plan.token_prefix, text_mode=plan.text_mode
    )
    sub.types = plan.types
    sub.connected_at = plan.connected_at
    try:
        cursor, newest = plan.cursor, plan.newest
        if newest is not None and cursor > newest:  # ahead of the table: rare, costs one query
            with state.db.autocommit() as cur:
                oldest = storage.oldest_event_id(cur, plan.exec_id)
            reset, cursor = _reset_frame(cursor, newest, oldest)
            yield t.cast(bytes, reset)
            newest = None
            ending.last = cursor  # the client's cursor is the reset's id now
        last, ended = yield from _replay(state, plan, sub, cursor, newest)
        if ended or (plan.terminal_id is not None and last >= plan.terminal_id):
            # Pruned to the end: the stream_reset's id was the terminal id; a reconnect gets 204 (SPEC §9).
            ending.reason = "terminal"
            return
        if plan.socket is not None:
            sub.fd, sub.chunked = plan.socket.fileno(), plan.chunked
        hub.caught_up(sub, last)
        with _hangup_watch(plan.client, sub):
            ending.reason = yield from _live(state, plan, sub, last)
    except DatabaseUnavailable:
        # After the first byte a status can no longer say 503: end cleanly instead; the
        # client resumes with Last-Event-ID and gets the 503 while the outage lasts (SPEC §2).
        ending.reason = "unavailable"
        return
    except GeneratorExit:
        # gunicorn closes us when a write fails: a client that hung up, or one that stopped
        # reading until the send timeout (its socket still full) — issue 4's slow client.
        ending.reason = "client_gone"
        if _unsent(plan.client):
            counters.SLOW_CLIENT_DISCONNECTS.inc()
            ending.reason = "slow_client"
        raise
    finally:
        hub.unsubscribe(sub)
        ending.sent, ending.last = sub.sent, max(ending.last, sub.last)
        # Before the response's last byte: a client that sees the end may open another at once.
        release()


def _send_pending(plan: Plan, sub: Subscriber) -> str | None:
    """Finish a direct write the socket did not take at once; why the stream must end, if it must."""
    data, sub.pending = sub.pending, b""
    try:
        plan.socket.sendall(data)  # cooperative, bounded by the send timeout
    except TimeoutError:
        counters.SLOW_CLIENT_DISCONNECTS.inc()  # it stopped reading (issue 4)
        return "slow_client"
    except OSError:
        return "client_gone"
    return None


def _shutdown_end(plan: Plan) -> bytes:
    """The last bytes of a stream ended by shutdown: a jittered ``retry:`` (SPEC §5.4, §9).

    The streams of a worker all end at once; spread over half to one and a half
    retry periods, their reconnects do not all land on the next worker together.
    Reading is shut too, so gunicorn closes the connection after this response
    instead of keeping it for another request to a worker that is going away.
    """
    if plan.client is not None:
        with contextlib.suppress(OSError):
            plan.client.shutdown(socket.SHUT_RD)
    return framing.retry(random.randint(plan.retry_ms // 2, plan.retry_ms * 3 // 2))


def _live(state: State, plan: Plan, sub: Subscriber, last: int) -> Generator[bytes, None, str]:
    """Live events until the stream ends; why it ended (SPEC §9). ``sub.last`` follows the cursor."""
    started = time.monotonic()
    next_ping = started + plan.heartbeat_s
    end = started + plan.lifetime_s
    while True:
        now = time.monotonic()
        if sub.closing:
            if sub.reason == "shutdown":
                yield _shutdown_end(plan)
            return sub.reason
        if now >= end:
            return "lifetime"
        if now >= next_ping:
            yield framing.PING
            next_ping = now + plan.heartbeat_s
        sub.last, sub.parked = last, True
        sub.wakeup.wait(timeout=min(next_ping, end) - now)
        sub.parked = False
        last = sub.last  # the hub may have written frames for us meanwhile
        gone = _send_pending(plan, sub) if sub.pending else None
        if gone:
            return gone
        if sub.ended:
            return "terminal"
        items, overflowed = sub.take()
        if sub.dropped_chunks:
            # Comments are ignored by clients; operators reading raw streams see the gap.
            yield framing.comment(f"dropped {sub.dropped_chunks} text chunks")
            sub.dropped_chunks = 0
        if overflowed:
            last, ended = yield from _replay(state, plan, sub, last)
            if ended:
                return "terminal"
            continue
        frames, last, ended, types = _frames(plan, items, last)
        if frames:
            yield b"".join(frames)
            _written(sub, types)
            oldest = next((frame for frame in frames if frame.startswith(b"id:")), None)
            if oldest is not None:  # text chunks have no commit
                counters.commit_to_send(oldest)
        sub.last = last
        if ended:
            return "terminal"
