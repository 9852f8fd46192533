"""The development demo page (SPEC §6).

``bp`` is registered only under ``STREAMAPP_ENV=development`` on the
standalone app (``python app.py``): ``GET /`` (the page), ``POST
/demo/session`` and two demo producers, ``POST /demo/workflow`` and ``POST
/demo/agent``. Production answers 404 for all of them. The page loads
``/static/streamapp.js`` (``assets.py``).

``POST /demo/session`` signs the browser in as the development user
(``dev@streamapp.local``, which ``app.py`` creates on a fresh ``./var/``)
without a password. That is acceptable only because: it exists only in
development; ``app.py`` binds to 127.0.0.1; the request must come from a
loopback address *and* name a loopback host (a DNS-rebinding page on
``evil.example`` resolved to 127.0.0.1 carries ``Host: evil.example``, so even
``--host 0.0.0.0`` does not open it to other machines); and it follows the
cross-site rule of every cookie request (JSON, same origin, SPEC §7).

The demo producers use the public producer API only (``state.producer``, its
``chunk_publisher``), in a background greenlet, as a host's worker would.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import typing as t
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import psycopg2
from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request
from flask import send_from_directory
from flask import url_for
from flask_login import login_user

from . import accounts
from .auth import refuse_token_in_url
from .auth import require
from .errors import Forbidden
from .errors import NotFound
from .errors import StreamappError
from .inputs import authenticated_by_cookie
from .inputs import client_address
from .inputs import refuse_cross_site
from .state import current_state

if t.TYPE_CHECKING:
    from .producer import Producer
    from .state import State

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
DEV_EMAIL = "dev@streamapp.local"
Sleep = Callable[[float], t.Any]

bp = Blueprint("streamapp_demo", __name__)
bp.before_request(refuse_token_in_url)


@bp.get("/")
def page() -> Response:
    # A plain file: the page learns the API prefix from POST /demo/session.
    return send_from_directory(STATIC, "demo.html", mimetype="text/html")


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    if address == "localhost" or address.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


@bp.post("/demo/session")
def session() -> Response:
    """Sign the browser in as the development user (see the module docstring for why this is safe).

    :raises Forbidden: not from this machine, or a cross-site request.
    :raises NotFound: there is no active development user.
    """
    # client_address() is the client's, not a local proxy's, when STREAMAPP_PROXY_HOPS says one is in front.
    if not (_loopback(client_address()) and _loopback(urlsplit("//" + request.host).hostname)):
        raise Forbidden("the demo signs in only from this machine (http://127.0.0.1 or http://localhost)")
    refuse_cross_site()
    with current_state().db.transaction() as cur:
        user = accounts.find_user(cur, DEV_EMAIL)
    if user is None or not user.is_active:
        raise NotFound(f"no development user {DEV_EMAIL}: python app.py creates it on a fresh ./var/")
    login_user(user)
    return jsonify({"email": user.email, "api": request.script_root + current_state().url_prefix})


def _create(kind: str, name: str, input: dict[str, t.Any]) -> tuple[State, str]:
    """Create a demo execution owned by the caller; the state and its exec_id.

    :raises NotAuthenticated: nobody is signed in.
    :raises Forbidden: no ``publish`` scope, or a cross-site cookie request.
    """
    user = require("publish")
    if authenticated_by_cookie():
        refuse_cross_site()
    state = current_state()
    execution = state.producer.create_execution(kind, name, str(user.get_id()), input=input)
    return state, execution["exec_id"]


def _started(kind: str, exec_id: str) -> tuple[Response, int]:
    stream_url = url_for("streamapp_stream.stream", kind=kind + "s", exec_id=exec_id)
    return jsonify({"exec_id": exec_id, "kind": kind, "stream_url": stream_url}), 201


def _guarded(run: Callable[..., None], *args: t.Any, **kwargs: t.Any) -> None:
    # A demo that cannot finish (the database went away) is logged, not raised into gevent's hub.
    try:
        run(*args, **kwargs)
    except (StreamappError, psycopg2.Error):
        log.warning("a demo execution stopped early", exc_info=True)


@bp.post("/demo/workflow")
def start_workflow() -> tuple[Response, int]:
    state, exec_id = _create("workflow", "nightly-sales-report", {"date": datetime.date.today().isoformat()})
    # Plain values only: the greenlet outlives this request and its context.
    gevent.spawn(_guarded, run_workflow, state.producer, exec_id)
    return _started("workflow", exec_id)


@bp.post("/demo/agent")
def start_agent() -> tuple[Response, int]:
    state, exec_id = _create("agent", "support-agent", {"question": AGENT_QUESTION})
    gevent.spawn(_guarded, run_agent, state.producer, exec_id)
    return _started("agent", exec_id)


# -- the demo producers: what a host's worker would append ----------------------------------------

WORKFLOW_STEPS = (
    ("fetch-orders", "sql.query", {"table": "orders", "since": "yesterday"}, {"rows": 1284}, 0.9),
    ("compute-totals", "python.run", {"script": "totals.py"}, {"total_eur": 48210.75, "regions": 4}, 0.7),
    ("render-chart", "chart.render", {"kind": "bar", "series": "region"}, {"image": "sales.png"}, 0.8),
    ("send-email", "email.send", {"to": "sales-team"}, {"message_id": "m-5521"}, 0.5),
)


def _events(*events: tuple[str, dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    return [{"type": type_name, "data": data} for type_name, data in events]


def run_workflow(producer: Producer, exec_id: str, *, sleep: Sleep = gevent.sleep) -> None:
    """A nightly report: start, RUNNING, four steps with a tool call each, one warning, complete."""
    append = producer.append_events
    append(exec_id, _events(("workflow_start", {"workflow_id": "nightly-sales-report"})))
    sleep(0.4)
    append(exec_id, _events(("workflow_status", {"status": "RUNNING"})))
    for n, (task_id, tool, tool_input, output, seconds) in enumerate(WORKFLOW_STEPS, 1):
        call = {"tool_call_id": f"call-{n}", "tool_name": tool}
        append(
            exec_id,
            _events(
                ("task_status", {"task_id": task_id, "status": "RUNNING"}),
                ("tool_call", {**call, "status": "running", "input": tool_input}),
            ),
        )
        sleep(seconds)
        if task_id == "fetch-orders":
            append(exec_id, _events(("warning", {"code": "slow_query", "message": "the orders query took 0.9 s"})))
        append(
            exec_id,
            _events(
                ("tool_call", {**call, "status": "done", "output": output, "duration_ms": round(seconds * 1000)}),
                ("task_status", {"task_id": task_id, "status": "SUCCESS"}),
            ),
        )
        sleep(0.3)
    output = {"orders": 1284, "total_eur": 48210.75, "chart": "sales.png", "emailed_to": "sales-team"}
    append(exec_id, _events(("complete", {"status": "SUCCESS", "output": output})))


AGENT_QUESTION = "Why was last night's sales report late?"
AGENT_ANSWER = (
    "Last night's sales report finished 14 minutes later than usual.\n"
    "The delay came from the first step: the orders query scanned the whole orders table "
    "because yesterday's import added 40,000 rows without refreshing the table statistics, "
    "so PostgreSQL chose a sequential scan instead of the index on created_at.\n"
    "The other three steps ran at their normal speed, and the email went out at 06:14.\n"
    "To prevent it: run ANALYZE on the orders table at the end of the import job, "
    "and add an alert when the report has not been sent by 06:05. "
    "I can open a ticket for the import team if you like.\n"
)


def run_agent(
    producer: Producer,
    exec_id: str,
    *,
    sleep: Sleep = gevent.sleep,
    seconds: float = 10.0,
) -> None:
    """A support agent: RUNNING, one tool call, about ``seconds`` of text word by word, complete."""
    append = producer.append_events
    append(exec_id, _events(("agent_status", {"status": "RUNNING"})))
    call = {"tool_call_id": "call-1", "tool_name": "logs.search"}
    append(exec_id, _events(("tool_call", {**call, "status": "running", "input": {"query": "sales report"}})))
    sleep(0.8)
    append(exec_id, _events(("tool_call", {**call, "status": "done", "output": {"hits": 3}, "duration_ms": 800})))
    words = AGENT_ANSWER.split(" ")
    # Text chunks are best-effort (SPEC §5.2); complete carries the whole answer.
    with producer.chunk_publisher(exec_id) as out:
        for n, word in enumerate(words):
            out.write(word if n == len(words) - 1 else word + " ")
            sleep(seconds / len(words))
    append(exec_id, _events(("complete", {"status": "SUCCESS", "output": AGENT_ANSWER})))
