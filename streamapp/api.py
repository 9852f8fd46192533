"""Executions and events over HTTP (SPEC §2)."""

from __future__ import annotations

import base64
import datetime
import io
import secrets
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
from .auth import authenticated_by_cookie
from .auth import issue_ticket
from .auth import refuse_cross_site
from .auth import require
from .auth import require_json_body
from .auth import visible_execution
from .errors import BadRequest
from .errors import Conflict
from .errors import Forbidden
from .errors import Invalid
from .errors import NotFound
from .errors import TooLarge
from .errors import Unavailable
from .schemas import AppendOut
from .schemas import CancelBody
from .schemas import EventsAppend
from .schemas import ExecutionCreate
from .schemas import ExecutionOut
from .schemas import ListQuery
from .state import current_state

bp = Blueprint("streamapp_api", __name__)

_KIND_SEGMENTS = {"workflows": "workflow", "agents": "agent", "tasks": "task"}
# Built once, used by every request: a marshmallow Schema costs more to make than to use.
_execution_out = ExecutionOut()
_execution_create = ExecutionCreate()
_list_query = ListQuery()
_events_append = EventsAppend()
_append_out = AppendOut()


def kind_of(segment: str) -> str:
    """The execution kind named by a URL segment.

    :raises NotFound: an unknown segment.
    """
    kind = _KIND_SEGMENTS.get(segment)
    if kind is None:
        raise NotFound()
    return kind


def _document(execution: dict[str, t.Any]) -> dict[str, t.Any]:
    segment = execution["kind"] + "s"
    stream_url = url_for("streamapp_stream.stream", kind=segment, exec_id=execution["exec_id"])
    return t.cast(dict[str, t.Any], _execution_out.dump({**execution, "stream_url": stream_url}))


def _with_body_limit() -> t.Any:
    limit = current_state().settings.max_body_bytes
    request.max_content_length = limit
    if request.content_length is None:
        _hold_chunked_body(limit)
    return require_json_body()


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


def _owner_for(cur: t.Any, user: t.Any, owner: str | None) -> str:
    """Who a new execution belongs to; only an admin's publish token may choose (SPEC §2)."""
    if owner is None:
        return str(user.get_id())
    is_service = getattr(user, "is_admin", False) and getattr(user, "token_prefix", None) is not None
    if not is_service:
        raise Forbidden("only an admin's publish token may set owner")
    if not current_state().own_users:
        return owner
    found = accounts.find_user(cur, owner) if "@" in owner else (
        accounts.get_user(cur, int(owner)) if owner.isdigit() else None
    )
    if found is None:
        raise Invalid("owner: no such user")
    return found.get_id()


@bp.post("/executions/<segment>")
def create_execution(segment: str) -> tuple[Response, int]:
    kind = kind_of(segment)
    user = require("publish")
    body = _execution_create.load(_with_body_limit())
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
        )
    return jsonify(_document(execution)), 201


@bp.get("/executions/<segment>/<exec_id>")
def get_execution(segment: str, exec_id: str) -> Response:
    kind = kind_of(segment)
    user = require("read")
    with current_state().db.transaction() as cur:
        execution = visible_execution(cur, kind, exec_id, user)
    return jsonify(_document(execution))


def _encode_cursor(execution: dict[str, t.Any]) -> str:
    raw = f"{execution['created_at'].isoformat()}|{execution['exec_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, exec_id = raw.split("|", 1)
        created_at = datetime.datetime.fromisoformat(ts)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this endpoint returned") from None
    # Python reads ISO forms PostgreSQL does not (week dates), and a NUL fails the query:
    # pass on only what _encode_cursor could have written.
    if created_at.tzinfo is None or not producer.EXEC_ID_PATTERN.fullmatch(exec_id):
        raise BadRequest("cursor: not a cursor this endpoint returned")
    return created_at.isoformat(), exec_id


@bp.get("/executions/<segment>")
def list_executions(segment: str) -> Response:
    kind = kind_of(segment)
    user = require("read")
    try:
        query = _list_query.load(single_valued_args())
    except ValidationError as exc:
        raise _bad_query(exc) from None
    after = _decode_cursor(query["cursor"]) if query["cursor"] else None
    owner_id = None if getattr(user, "is_admin", False) else str(user.get_id())
    with current_state().db.transaction() as cur:
        rows = storage.list_executions(cur, kind, owner_id=owner_id, limit=query["limit"] + 1, after=after)
    page, more = rows[: query["limit"]], len(rows) > query["limit"]
    return jsonify(
        {"items": [_document(r) for r in page], "next_cursor": _encode_cursor(page[-1]) if more else None}
    )


def single_valued_args() -> dict[str, str]:
    """The query string, one value per name.

    :raises BadRequest: a name given twice, rather than silently using the first.
    """
    for name, values in request.args.lists():
        if len(values) > 1:
            raise BadRequest(f"{name}: given more than once")
    return request.args.to_dict()


def _bad_query(exc: ValidationError) -> BadRequest:
    from .errors import flatten_messages

    return BadRequest("; ".join(flatten_messages(exc.messages)))


@bp.post("/executions/<segment>/<exec_id>/events")
def append_events(segment: str, exec_id: str) -> tuple[Response, int]:
    kind = kind_of(segment)
    user = require("read")
    state = current_state()
    if "publish" not in getattr(user, "scopes", accounts.SCOPES):
        # Visibility first (404 hides existence), then the scope (403), before the content.
        with state.db.autocommit() as cur:
            visible_execution(cur, kind, exec_id, user)
        require("publish")
    if not producer.EXEC_ID_PATTERN.fullmatch(exec_id):
        raise NotFound()
    body = _events_append.load(_with_body_limit())

    def visible(execution: dict[str, t.Any]) -> None:
        # Checked on the locked row, inside the append's own transaction.
        if not state.authorize(user, execution):
            raise NotFound()

    result = state.producer.append_events(exec_id, body["events"], kind=kind, check=visible)
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
    texts = _chunk_texts(_with_body_limit())
    state = current_state()
    if not state.settings.notify:
        raise Unavailable("text chunks travel by LISTEN/NOTIFY, which STREAMAPP_NOTIFY=false turns off", 3600)
    with state.db.transaction() as cur:
        execution = visible_execution(cur, kind, exec_id, user)
        require("publish")
        if execution["terminal_event_id"] is not None:
            raise Conflict("the execution has ended: no chunk may follow complete or error")
        texts = [state.redactor.redact_text(text) for text in texts]
        cur.execute("SET LOCAL synchronous_commit TO off")
        chunks.publish(cur, exec_id, texts, secrets.token_hex(6), 0)
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
    return t.cast("str | None", _cancel_body.load(_with_body_limit())["reason"])


@bp.post("/executions/<segment>/<exec_id>/cancel")
def cancel_execution(segment: str, exec_id: str) -> Response:
    """End an execution with ``error`` CANCELED; 409 once it has ended (SPEC §2)."""
    kind = kind_of(segment)
    user = require("read")
    state = current_state()
    if "publish" not in getattr(user, "scopes", accounts.SCOPES):
        # Visibility first (404 hides existence), then the scope (403), as for appends.
        with state.db.autocommit() as cur:
            visible_execution(cur, kind, exec_id, user)
        require("publish")
    if not producer.EXEC_ID_PATTERN.fullmatch(exec_id):
        raise NotFound()
    reason = _cancel_reason()

    def visible(execution: dict[str, t.Any]) -> None:
        # Checked on the locked row, so "not yours" is 404 even when it has ended.
        if not state.authorize(user, execution):
            raise NotFound()

    execution = state.producer.cancel(exec_id, reason=reason, kind=kind, check=visible)
    return jsonify(_document(execution))
