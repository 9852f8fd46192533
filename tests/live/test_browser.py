"""``streamapp.js`` and the demo page in Debian's Chromium, against a live gunicorn (SPEC §6).

Chromium is driven with the ``playwright`` package (never ``playwright install``: the browser is
``/usr/bin/chromium``). Pages on a made-up public origin reach 127.0.0.1 only with Chromium's
Local Network Access checks turned off (CLIENTS.md).
"""

from __future__ import annotations

import re
import typing as t

import pytest
import requests

from streamapp import ChunkPublisher
from streamapp import demo
from streamapp import retention
from tests.conftest import ROOT
from tests.conftest import live_server
from tests.test_demo import ensure_dev_user

pytestmark = pytest.mark.live

ARTIFACTS = ROOT / "var" / "artifacts"
ORIGIN = "http://dashboard.example"
EXAMPLES = ROOT / "examples" / "browser"
RETRY_MS = 300
#: The server cuts every stream after about a second, and a ticket lives two: a stream that
#: runs a few seconds is resumed by the browser itself, then by streamapp.js with a new ticket.
SHORT = {
    "STREAMAPP_CORS_ORIGINS": ORIGIN,
    "STREAMAPP_STREAM_LIFETIME_S": "1",
    "STREAMAPP_TICKET_TTL_S": "2",
    "STREAMAPP_RETRY_MS": str(RETRY_MS),
    "STREAMAPP_HEARTBEAT_S": "0.5",
    "STREAMAPP_POLL_MS": "250",
}
WAIT_MS = 30_000

# A bare page with streamapp.js that records what its callbacks get.
HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>harness</title>
<script src="SERVER/static/streamapp.js"></script>
<script>
  window.seen = {events: [], texts: [], statuses: [], tickets: 0};
  window.start = function (url, withTicket) {
    window.follower = streamapp.follow(url, {
      ticket: withTicket ? function () { seen.tickets += 1; return window.getTicket(); } : undefined,
      onEvent: function (e) { seen.events.push(e); },
      onText: function (text, envelope) { seen.texts.push([text, envelope]); },
      onStatus: function (status, lastId) { seen.statuses.push([status, lastId]); },
    });
  };
</script></head><body></body></html>"""


@pytest.fixture(scope="module")
def short_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    with live_server(database, tmp_path_factory.mktemp("browser"), SHORT) as live:
        yield live


def _shot(page: t.Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _text(page: t.Any, selector: str) -> str:
    return t.cast(str, page.eval_on_selector(selector, "node => node.textContent"))


# -- the demo page -------------------------------------------------------------------------------


def _open_demo(page: t.Any, server: t.Any, db: t.Any) -> None:
    from playwright.sync_api import expect

    ensure_dev_user(db)
    page.goto(server.url + "/")
    expect(page.locator("#session")).to_have_text("Signed in as dev@streamapp.local (development user)")


def test_the_demo_page_runs_a_workflow_to_the_end(page, server, db):
    from playwright.sync_api import expect

    _open_demo(page, server, db)
    page.get_by_role("button", name="Run a demo workflow").click()
    expect(page.locator("#exec-status")).to_have_text("✓ SUCCESS", timeout=WAIT_MS)
    expect(page.locator("#connection")).to_have_text("Closed")
    steps = [step[0] for step in demo.WORKFLOW_STEPS]
    expect(page.locator("#steps .step-name")).to_have_text(steps)
    expect(page.locator("#steps .step-status")).to_have_text(["— SUCCESS"] * len(steps))
    expect(page.locator("#steps .tools li")).to_have_count(len(steps))
    expect(page.locator("#steps .tools li").first).to_have_text(re.compile(r"tool sql\.query — done \(\d+ ms\)"))
    expect(page.locator("#steps .warning")).to_have_text(re.compile("Warning: the orders query"))
    events = int(_text(page, "#last-id"))
    expect(page.locator("#log li")).to_have_count(events)
    assert '"orders": 1284' in _text(page, "#console")
    assert _text(page, "#announcer") == "Connection: Closed"
    _shot(page, "demo-workflow.png")


def test_the_demo_page_streams_an_agents_text_live_then_completes(page, server, db):
    from playwright.sync_api import expect

    _open_demo(page, server, db)
    page.get_by_role("button", name="Run a demo agent").click()
    # Text shows while the agent still runs: it arrives chunk by chunk, not with `complete`.
    page.wait_for_function(
        "() => document.getElementById('console').textContent.length > 0"
        " && document.getElementById('exec-status').dataset.status === 'RUNNING'",
        timeout=WAIT_MS,
    )
    expect(page.locator("#exec-status")).to_have_text("✓ SUCCESS", timeout=WAIT_MS)
    expect(page.locator("#connection")).to_have_text("Closed")
    assert _text(page, "#console") == demo.AGENT_ANSWER
    expect(page.locator("#steps .tools li, #steps > li")).to_have_text(["tool logs.search — done (800 ms)"])
    _shot(page, "demo-agent.png")


def test_the_demo_page_follows_a_typed_execution_id(page, server, db, producer, auth):
    from playwright.sync_api import expect

    owner = ensure_dev_user(db)
    exec_id = producer.create_execution("workflow", "typed", owner.get_id())["exec_id"]
    producer.append_events(exec_id, [{"type": "workflow_status", "data": {"status": "RUNNING"}}])
    _open_demo(page, server, db)
    page.get_by_label("Execution id").fill("no-such-execution")
    page.get_by_role("button", name="Follow", exact=True).click()
    expect(page.locator("#message")).to_have_text("No execution no-such-execution of that kind (or not yours).")
    page.get_by_label("Execution id").fill(exec_id)
    page.get_by_role("button", name="Follow", exact=True).click()
    expect(page.locator("#exec-status")).to_have_text("◐ RUNNING")
    expect(page.locator("#connection")).to_have_text("Open")
    _append(producer, exec_id, ("error", {"status": "FAILED", "error": {"message": "disk full"}}))
    expect(page.locator("#exec-status")).to_have_text("✗ FAILED")
    expect(page.locator("#steps .failure")).to_have_text("✗ FAILED: disk full")
    expect(page.locator("#connection")).to_have_text("Closed")


# -- streamapp.js against a server that cuts streams and expires tickets -----------------------------


class Recorder:
    """Every stream request and answer the page makes, in order."""

    def __init__(self, page: t.Any) -> None:
        self.requests: list[str] = []
        self.answers: list[tuple[int, str]] = []
        page.on("request", lambda r: self.requests.append(r.url) if "/stream" in r.url else None)
        page.on("response", lambda r: self.answers.append((r.status, r.url)) if "/stream" in r.url else None)


def _seen(page: t.Any) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], page.evaluate("() => window.seen"))


def _wait(page: t.Any, condition: str) -> None:
    page.wait_for_function(f"() => {condition}", timeout=WAIT_MS)


def _quiet_after_close(page: t.Any, recorder: Recorder) -> None:
    """No stream request once the terminal event closed the stream.

    A reconnect would come ``retry`` ms (or streamapp.js's first back-off, at most 1 s) later:
    this waits out several of them. It waits for nothing to happen, not for an event.
    """
    count = len(recorder.requests)
    page.wait_for_timeout(4 * RETRY_MS + 1000)
    assert recorder.requests[count:] == []


def _follow_same_origin(page: t.Any, server: t.Any, account: t.Any, url: str) -> Recorder:
    """The harness page on the server's own origin, signed in with the session cookie (no ticket),
    following ``url``; the recorder of its stream requests."""
    page.route(
        server.url + "/harness",
        lambda route: route.fulfill(content_type="text/html", body=HARNESS.replace("SERVER", "")),
    )
    login = page.request.post(server.api("/auth/login"), data={"email": account.email, "password": account.password})
    assert login.status == 200
    recorder = Recorder(page)
    page.goto(server.url + "/harness")
    page.evaluate("url => start(url, false)", url)
    return recorder


def _append(producer: t.Any, exec_id: str, *events: tuple[str, dict[str, t.Any]]) -> None:
    producer.append_events(exec_id, [{"type": type_name, "data": data} for type_name, data in events])


def _step(n: int) -> tuple[str, dict[str, t.Any]]:
    return ("task_status", {"task_id": f"step-{n}", "status": "SUCCESS"})


def test_cross_origin_with_tickets_every_event_once_across_cut_streams_and_expired_tickets(
    page, short_server, account, workflow, producer
):
    tickets: list[str] = []

    def get_ticket() -> str:
        # The page's backend: it holds the token and asks streamapp for a ticket.
        r = requests.post(
            short_server.api(f"/executions/workflows/{workflow}/stream-ticket"), headers=account.headers, timeout=10
        )
        r.raise_for_status()
        tickets.append(r.json()["ticket"])
        return tickets[-1]

    page.expose_function("getTicket", get_ticket)
    page.route(
        ORIGIN + "/",
        lambda route: route.fulfill(content_type="text/html", body=HARNESS.replace("SERVER", short_server.url)),
    )
    recorder = Recorder(page)
    page.goto(ORIGIN + "/")
    # A query in the URL already: streamapp.js adds its own parameters with `&`.
    url = short_server.api(f"/executions/workflows/{workflow}/stream") + "?poll_ms=250"
    page.evaluate("url => start(url, true)", url)

    _append(producer, workflow, ("workflow_start", {"workflow_id": "w"}), ("workflow_status", {"status": "RUNNING"}))
    _wait(page, "seen.events.length === 2")
    # The server cut the stream at its lifetime; the browser reconnected by itself.
    _wait(page, "seen.statuses.some(s => s[0] === 'reconnecting')")
    _append(producer, workflow, _step(3), _step(4))
    _wait(page, "seen.events.length === 4")
    # Two seconds on, the ticket has expired: the browser's own reconnect got 401 and gave
    # up, and streamapp.js asked for a new ticket. Events appended meanwhile are not lost.
    _append(producer, workflow, _step(5))
    _wait(page, "seen.tickets >= 2")
    _append(producer, workflow, _step(6))
    _wait(page, "seen.events.length === 6")
    _append(producer, workflow, _step(7), ("complete", {"status": "SUCCESS"}))
    _wait(page, "seen.statuses.length > 0 && seen.statuses[seen.statuses.length - 1][0] === 'closed'")
    _quiet_after_close(page, recorder)

    seen = _seen(page)
    assert [e["id"] for e in seen["events"]] == list(range(1, 9))
    assert seen["events"][-1]["type"] == "complete"
    assert seen["statuses"][-1] == ["closed", 8]
    assert ["reconnecting"] in [s[:1] for s in seen["statuses"]]
    assert any(status == 401 for status, _ in recorder.answers)
    reopened = [u for u in recorder.requests if f"ticket={tickets[-1]}" in u]
    assert reopened and all(re.search(r"\?poll_ms=250&ticket=[^&]+&last_event_id=\d+$", u) for u in reopened)
    assert len(tickets) >= 2


def test_a_catalog_error_event_ends_the_stream_and_a_dropped_connection_does_not(
    page, short_server, account, producer, db
):
    # Same origin, with the session cookie: no ticket function; an agent in text mode.
    exec_id = producer.create_execution("agent", "a", account.user.get_id())["exec_id"]
    recorder = _follow_same_origin(page, short_server, account, f"/api/v0/executions/agents/{exec_id}/stream")

    _append(producer, exec_id, ("agent_status", {"status": "RUNNING"}))
    _wait(page, "seen.events.length === 1")
    # Text chunks are best-effort: one published while the stream is between connections is
    # lost by design, so publish until one arrives.
    with ChunkPublisher(db, exec_id) as out:
        while not _seen(page)["texts"]:
            out.write("thinking…\n")
            page.wait_for_timeout(200)
    # The server cuts the stream: a connection error, reported and recovered, no event.
    _wait(page, "seen.statuses.some(s => s[0] === 'reconnecting')")
    _wait(page, "seen.statuses[seen.statuses.length - 1][0] === 'open'")
    _append(producer, exec_id, ("error", {"status": "FAILED", "error": {"message": "model overloaded"}}))
    _wait(page, "seen.statuses[seen.statuses.length - 1][0] === 'closed'")
    _quiet_after_close(page, recorder)

    seen = _seen(page)
    assert [e["type"] for e in seen["events"]] == ["agent_status", "error"]
    error = seen["events"][1]
    assert (error["id"], error["exec_id"], error["kind"]) == (2, exec_id, "agent")
    assert error["data"] == {"status": "FAILED", "error": {"message": "model overloaded"}}
    assert seen["texts"][0] == ["thinking…\n", None]  # text mode: the text itself, no envelope
    closing = [i for i, s in enumerate(seen["statuses"]) if s[0] == "closed"]
    assert closing == [len(seen["statuses"]) - 1] and seen["statuses"][-1] == ["closed", 2]


def test_a_stream_reset_to_the_end_of_a_pruned_execution_closes_it(page, short_server, account, producer, db):
    exec_id = producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    _append(producer, exec_id, ("workflow_status", {"status": "RUNNING"}), ("complete", {"status": "SUCCESS"}))
    with db.transaction() as cur:
        # As if it had ended eight days ago, so a 7-day retention removes its events.
        cur.execute(
            "UPDATE executions SET created_at = created_at - interval '8 days',"
            " updated_at = updated_at - interval '8 days' WHERE exec_id = %s",
            (exec_id,),
        )
    retention.prune(db, 7 * 86400)
    recorder = _follow_same_origin(
        page, short_server, account, f"/api/v0/executions/workflows/{exec_id}/stream?last_event_id=0"
    )
    _wait(page, "seen.statuses.length > 0 && seen.statuses[seen.statuses.length - 1][0] === 'closed'")
    _quiet_after_close(page, recorder)

    seen = _seen(page)
    assert seen["events"] == [
        {"id": 2, "type": "stream_reset", "data": {"reason": "cursor_expired", "newest_id": 2, "oldest_id": 0}}
    ]
    assert seen["statuses"][-1] == ["closed", 2]


def test_many_executions_on_one_connection_each_event_once_across_cut_streams(page, short_server, account, producer):
    """SPEC §5.6 in a real browser: the stream is cut every second and resumed by the browser
    itself with the cursor token; streamapp.js closes once every listed execution has ended."""
    owner = account.user.get_id()
    workflow = producer.create_execution("workflow", "w", owner)["exec_id"]
    agent = producer.create_execution("agent", "a", owner)["exec_id"]
    recorder = _follow_same_origin(
        page, short_server, account, f"/api/v0/streams?ids=workflows/{workflow},agents/{agent}"
    )

    _append(producer, workflow, ("workflow_start", {"workflow_id": "w"}), _step(2))
    _append(producer, agent, ("agent_status", {"status": "RUNNING"}))
    _wait(page, "seen.events.length === 3")
    _wait(page, "seen.statuses.some(s => s[0] === 'reconnecting')")
    _append(producer, agent, ("warning", {"code": "slow", "message": "slow"}))
    _append(producer, workflow, _step(3))
    _wait(page, "seen.events.length === 5")
    _append(producer, workflow, ("complete", {"status": "SUCCESS"}))
    _wait(page, "seen.events.length === 6")
    page.wait_for_timeout(1500)  # past a cut: the stream goes on after one execution ended
    assert _seen(page)["statuses"][-1][0] != "closed"
    _append(producer, agent, ("complete", {"status": "SUCCESS"}))
    _wait(page, "seen.statuses.length > 0 && seen.statuses[seen.statuses.length - 1][0] === 'closed'")
    _quiet_after_close(page, recorder)

    seen = _seen(page)
    by_execution: dict[str, list[int]] = {}
    for event in seen["events"]:
        by_execution.setdefault(event["exec_id"], []).append(event["id"])
    assert by_execution == {workflow: [1, 2, 3, 4], agent: [1, 2, 3]}
    last_id = seen["statuses"][-1][1]
    assert isinstance(last_id, str) and re.fullmatch(r"[A-Za-z0-9._~-]+", last_id)
    # The browser resumed each cut stream itself, with the token: the server sent each event once
    # over all the connections, not again from the start (its end records count what each sent).
    records = [line for line in short_server.log_text().splitlines() if "kind=multiplex" in line]
    sent = [
        int(m.group(1))
        for line in records
        if f"user_id={owner} " in line
        for m in [re.search(r"events_sent=(\d+)", line)]
        if m
    ]
    assert len(sent) >= 2 and sum(sent) == 7, records


# -- the example pages, as printed -------------------------------------------------------------------


def _run_example(page: t.Any, producer: t.Any, exec_id: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Execution id").fill(exec_id)
    page.get_by_role("button", name="Follow", exact=True).click()
    expect(page.locator("#connection")).to_have_text(re.compile("^open"))
    _append(producer, exec_id, ("workflow_status", {"status": "RUNNING"}), ("complete", {"status": "SUCCESS"}))
    expect(page.locator("#status")).to_have_text("SUCCESS")
    expect(page.locator("#connection")).to_have_text("closed (last id 2)")
    expect(page.locator("#events li")).to_have_text(
        ['#1 workflow_status {"status":"RUNNING"}', '#2 complete {"status":"SUCCESS"}']
    )


def test_the_same_origin_example_page(page, short_server, account, workflow, producer):
    html = (EXAMPLES / "same-origin.html").read_text()
    page.route(short_server.url + "/example", lambda route: route.fulfill(content_type="text/html", body=html))
    login = page.request.post(
        short_server.api("/auth/login"), data={"email": account.email, "password": account.password}
    )
    assert login.status == 200
    page.goto(short_server.url + "/example")
    _run_example(page, producer, workflow)


def test_the_cross_origin_example_page_with_its_backend(page, short_server, account, workflow, producer):
    html = (EXAMPLES / "cross-origin.html").read_text().replace("http://127.0.0.1:8000", short_server.url)

    def backend(route: t.Any) -> None:
        # What README.md's /stream-ticket endpoint does, with the test's token.
        query = dict(re.findall(r"[?&](\w+)=([^&]*)", route.request.url))
        r = requests.post(
            short_server.api(f"/executions/{query['kind']}/{query['exec_id']}/stream-ticket"),
            headers=account.headers,
            timeout=10,
        )
        route.fulfill(status=r.status_code, json={"ticket": r.json().get("ticket")})

    page.route(ORIGIN + "/example", lambda route: route.fulfill(content_type="text/html", body=html))
    page.route(re.compile(re.escape(ORIGIN) + r"/stream-ticket\?"), backend)
    page.goto(ORIGIN + "/example")
    _run_example(page, producer, workflow)
