"""Executions and events over HTTP (SPEC §2)."""

from __future__ import annotations

import base64
import datetime
import typing as t

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request
from flask import url_for
from marshmallow import ValidationError

from . import accounts
from . import catalog
from . import chunks
from . import producer
from . import storage
from .auth import issue_list_ticket
from .auth import issue_ticket
from .auth import refuse_token_in_url
from .auth import require
from .auth import visible_execution
from .auth import visible_executions
from .cursor import canonical
from .cursor import list_digest
from .errors import BadRequest
from .errors import Forbidden
from .errors import Invalid
from .errors import NotFound
from .exec_ids import EXEC_ID_PATTERN
from .inputs import authenticated_by_cookie
from .inputs import bad_query
from .inputs import kind_of
from .inputs import refuse_cross_site
from .inputs import require_json_body
from .inputs import single_valued_args
from .schemas import AppendOut
from .schemas import CancelBody
from .schemas import EventsAppend
from .schemas import ExecutionCreate
from .schemas import ExecutionOut
from .schemas import ListQuery
from .schemas import StreamTicketsIn
from .state import current_state
from .storage import Execution

bp = Blueprint("streamapp_api", __name__)
# Before anything else, authentication included: a token in the URL is 400 (SPEC §7).
bp.before_request(refuse_token_in_url)

# Built once, used by every request: a marshmallow Schema costs more to make than to use.
_execution_out = ExecutionOut()
_execution_create = ExecutionCreate()
_list_query = ListQuery()
_events_append = EventsAppend()
_append_out = AppendOut()
_stream_tickets_in = StreamTicketsIn()


def _document(execution: Execution) -> dict[str, t.Any]:
    segment = execution["kind"] + "s"
    stream_url = url_for("streamapp_stream.stream", kind=segment, exec_id=execution["exec_id"])
    return t.cast(dict[str, t.Any], _execution_out.dump({**execution, "stream_url": stream_url}))


def _owner_for(cur: t.Any, user: t.Any, owner: str | None) -> str:
    """Who a new execution belongs to; only an admin's publish token may choose (SPEC §2)."""
    if owner is None:
        return str(user.get_id())
    is_service = getattr(user, "is_admin", False) and getattr(user, "token_prefix", None) is not None
    if not is_service:
        raise Forbidden("only an admin's publish token may set owner")
    if not current_state().own_users:
        return owner
    # Plain ASCII digits only: str.isdigit() takes "²", which int() refuses (a 500 once).
    user_id = int(owner) if owner.isascii() and owner.isdigit() and len(owner) <= 18 else None
    found = (
        accounts.find_user(cur, owner)
        if "@" in owner
        else (accounts.get_user(cur, user_id) if user_id is not None else None)
    )
    if found is None:
        raise Invalid("owner: no such user")
    return found.get_id()


@bp.post("/executions/<segment>")
def create_execution(segment: str) -> tuple[Response, int]:
    kind = kind_of(segment)
    user = require("publish")
    body = _execution_create.load(require_json_body())
    with current_state().db.transaction() as cur:
        owner_id = _owner_for(cur, user, body["owner"])
        execution = producer.create_execution(
            cur,
            kind,
            body["name"],
            owner_id,
            exec_id=body["exec_id"],
            input=body["input"],
            output_schema=body["output_schema"],
            # The configured rules (STREAMAPP_REDACT_KEYS too), not only the built-in ones.
            redact=current_state().redactor,
            max_json_depth=current_state().settings.max_json_depth,
        )
    return jsonify(_document(execution)), 201


@bp.get("/executions/<segment>/<exec_id>")
def get_execution(segment: str, exec_id: str) -> Response:
    kind = kind_of(segment)
    user = require("read")
    with current_state().db.transaction() as cur:
        execution = visible_execution(cur, kind, exec_id, user)
    return jsonify(_document(execution))


def _encode_cursor(execution: Execution) -> str:
    raw = f"{execution['created_at'].isoformat()}|{execution['exec_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, exec_id = raw.split("|", 1)
        created_at = datetime.datetime.fromisoformat(ts)
        # Python reads ISO forms PostgreSQL does not (week dates, offsets with fractions
        # of a second), and a failed query would log the cursor: hand PostgreSQL only the
        # one form it always reads, the moment in UTC (SPEC §2 "Robustness").
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        moment = created_at.astimezone(datetime.UTC).isoformat()
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise BadRequest("cursor: not a cursor this endpoint returned") from None
    # A NUL would fail the query too: pass on only an exec_id _encode_cursor could have written.
    if not EXEC_ID_PATTERN.fullmatch(exec_id):
        raise BadRequest("cursor: not a cursor this endpoint returned")
    return moment, exec_id


@bp.get("/executions/<segment>")
def list_executions(segment: str) -> Response:
    kind = kind_of(segment)
    user = require("read")
    try:
        query = _list_query.load(single_valued_args())
    except ValidationError as exc:
        raise bad_query(exc) from None
    after = _decode_cursor(query["cursor"]) if query["cursor"] else None
    owner_id = None if getattr(user, "is_admin", False) else str(user.get_id())
    with current_state().db.transaction() as cur:
        rows = storage.list_executions(cur, kind, owner_id=owner_id, limit=query["limit"] + 1, after=after)
    page, more = rows[: query["limit"]], len(rows) > query["limit"]
    return jsonify({"items": [_document(r) for r in page], "next_cursor": _encode_cursor(page[-1]) if more else None})


def _publisher(kind: str, exec_id: str) -> t.Any:
    """Who asks to write to this execution, once the request may go on to the producer.

    Visibility comes first (404 hides existence), then the ``publish`` scope (403), before
    anything of the body is read. The view then decides on the execution the producer holds
    (:func:`_may_write`: the locked row, or what the worker knows of it), so "not yours" is
    404 there too, even once it has ended.

    :raises NotFound: unknown, malformed or not visible.
    :raises Forbidden: visible, but the credential lacks ``publish``.
    """
    user = require("read")
    if "publish" not in getattr(user, "scopes", accounts.SCOPES):
        with current_state().db.autocommit() as cur:
            visible_execution(cur, kind, exec_id, user)
        require("publish")
    if not EXEC_ID_PATTERN.fullmatch(exec_id):
        raise NotFound()
    return user


def _may_write(user: t.Any, execution: Execution) -> None:
    """:raises NotFound: ``user`` may not see ``execution`` (the body of an unknown id, SPEC §7)."""
    if not current_state().authorize(user, execution):
        raise NotFound()


@bp.post("/executions/<segment>/<exec_id>/events")
def append_events(segment: str, exec_id: str) -> tuple[Response, int]:
    kind = kind_of(segment)
    user = _publisher(kind, exec_id)
    body = _events_append.load(require_json_body())
    with current_state().producer.appending(exec_id, body["events"], kind=kind) as pending:
        _may_write(user, pending.execution)
        result = pending.commit()
    return jsonify(_append_out.dump(result)), 201


@bp.post("/executions/<segment>/<exec_id>/stream-ticket")
def stream_ticket(segment: str, exec_id: str) -> tuple[Response, int]:
    """A short-lived ticket for this execution's stream, as ``?ticket=`` (SPEC §7).

    Any caller who may read the execution may ask (a ``read`` token too);
    anyone else gets the same 404 as for an unknown id. Nothing changes on
    the server, so no body is needed, but a session cookie's request must come
    from our own or an allow-listed origin, so no other site's page can use a
    visitor's session to mint a ticket for itself.
    """
    kind = kind_of(segment)
    user = require("read")
    if authenticated_by_cookie():
        refuse_cross_site(json_required=False)
    with current_state().db.transaction() as cur:
        visible_execution(cur, kind, exec_id, user)
    ticket, expires_at = issue_ticket(kind, exec_id, user)
    response = jsonify({"ticket": ticket, "expires_at": expires_at})
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.post("/stream-tickets")
def stream_tickets() -> tuple[Response, int]:
    """A short-lived ticket for the multiplexed stream of exactly these executions (SPEC §5.6, §7).

    As for one execution's ticket: any caller who may read every listed
    execution may ask, one that is unknown or not visible answers 404, and a
    session cookie's request must come from our own or an allow-listed origin.
    """
    user = require("read")
    if authenticated_by_cookie():
        refuse_cross_site()
    entries = canonical(_stream_tickets_in.load(require_json_body())["ids"])
    limit = current_state().settings.max_ids_per_stream
    if len(entries) > limit:
        raise Invalid(f"ids: lists {len(entries)} executions; a stream may list at most {limit}")
    with current_state().db.transaction() as cur:
        visible_executions(cur, entries, user)
    ticket, expires_at = issue_list_ticket(list_digest(entries), user)
    response = jsonify({"ticket": ticket, "expires_at": expires_at})
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("/events/catalog")
def event_catalog() -> Response:
    require("read")
    return jsonify(catalog.describe())


def _chunk_texts(body: t.Any) -> list[str]:
    if not isinstance(body, dict) or len(body) != 1 or not ({"text", "chunks"} & set(body)):
        raise Invalid('send {"text": "..."} or {"chunks": ["...", ...]}')
    if "text" in body:
        return [chunks.check_text(body["text"])]
    texts = body["chunks"]
    if not isinstance(texts, list) or not 1 <= len(texts) <= 1000:
        raise Invalid("chunks must be a list of 1 to 1000 strings")
    return [chunks.check_text(text, f"chunks[{n}]") for n, text in enumerate(texts)]


@bp.post("/executions/<segment>/<exec_id>/chunks")
def publish_chunks(segment: str, exec_id: str) -> tuple[Response, int]:
    """Best-effort text: travels by NOTIFY to the streams open now, never stored (SPEC §5.2)."""
    kind = kind_of(segment)
    user = require("read")
    texts = _chunk_texts(require_json_body())
    with current_state().producer.publishing_chunks(exec_id, texts, kind=kind) as pending:
        _may_write(user, pending.execution)
        require("publish")
        pending.commit()
    return jsonify({"accepted": len(texts)}), 202


_cancel_body = CancelBody()


def _cancel_reason() -> str | None:
    """The optional ``{reason}`` of a cancel; no body at all is fine (SPEC §2).

    A cancel changes state, so a session cookie's request must be JSON from
    our own or an allow-listed origin, body or not (SPEC §7).
    """
    if authenticated_by_cookie():
        refuse_cross_site()
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not request.content_length and not chunked:
        return None
    return t.cast("str | None", _cancel_body.load(require_json_body())["reason"])


@bp.post("/executions/<segment>/<exec_id>/cancel")
def cancel_execution(segment: str, exec_id: str) -> Response:
    """End an execution with ``error`` CANCELED; 409 once it has ended (SPEC §2)."""
    kind = kind_of(segment)
    user = _publisher(kind, exec_id)
    reason = _cancel_reason()
    with current_state().producer.canceling(exec_id, reason=reason, kind=kind) as pending:
        _may_write(user, pending.execution)
        execution = pending.commit()
    return jsonify(_document(execution))
