"""Many executions on one connection, over a live gunicorn (SPEC §5.6)."""

from __future__ import annotations

import re
import secrets

import pytest
import requests

from streamapp import accounts
from streamapp.cursor import Cursors
from streamapp.cursor import canonical
from tests.conftest import SECRET
from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import live_server
from tests.live.test_metrics import Metrics
from tests.sse import Stream
from tests.wire import append

pytestmark = pytest.mark.live

TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,1024}")
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


@pytest.fixture(scope="module", params=["direct", "generator"])
def server(request, database, tmp_path_factory):
    """Both delivery paths: lanes' frames written by the hub straight to the parked stream's socket,
    and the plain generator."""
    env = {**SHARED_SERVER_ENV, "STREAMAPP_DIRECT_WRITES": str(request.param == "direct").lower()}
    with live_server(database, tmp_path_factory.mktemp(request.param), env) as live:
        live.direct = request.param == "direct"
        yield live


def _url(server) -> str:
    return server.api("/streams")


def _ids(*entries: str) -> dict[str, str]:
    return {"ids": ",".join(entries)}


@pytest.fixture
def three(producer, account):
    """A workflow, a text agent and a JSON task of ``account``, as ``segment/exec_id`` entries."""
    owner = account.user.get_id()
    workflow = producer.create_execution("workflow", "wf", owner)["exec_id"]
    agent = producer.create_execution("agent", "ag", owner)["exec_id"]
    task = producer.create_execution("task", "tk", owner, output_schema={"type": "object"})["exec_id"]
    return [f"workflows/{workflow}", f"agents/{agent}", f"tasks/{task}"]


def _exec(entry: str) -> str:
    return entry.split("/")[1]


def _by_execution(frames) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for frame in frames:
        if frame.id is not None and frame.event != "stream_reset":
            seen.setdefault(frame.json["exec_id"], []).append(frame.json["id"])
    return seen


def test_replay_then_live_of_every_listed_execution_until_all_have_ended(server, account, producer, three):
    workflow, agent, task = map(_exec, three)
    append(producer, workflow, "workflow_start", "warning")
    append(producer, agent, "warning")
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        assert s.response.status_code == 200
        assert s.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        replayed = [s.next_frame() for _ in range(3)]
        assert _by_execution(replayed) == {workflow: [1, 2], agent: [1]}
        for frame in replayed:
            assert TOKEN.fullmatch(frame.id) and not frame.id.isdigit()
            assert frame.json["kind"] == {workflow: "workflow", agent: "agent"}[frame.json["exec_id"]]
        append(producer, task, "warning")
        live = s.next_frame()
        assert (live.json["exec_id"], live.json["kind"], live.json["id"]) == (task, "task", 1)
        producer.append_events(workflow, [COMPLETE])
        ended = s.next_frame()
        assert (ended.event, ended.json["exec_id"]) == ("complete", workflow)
        append(producer, agent, "warning")  # one terminal event does not end the stream
        assert s.next_frame().json["exec_id"] == agent
        producer.append_events(agent, [COMPLETE])
        producer.append_events(task, [COMPLETE])
        rest = s.rest()
        assert sorted(f.json["exec_id"] for f in rest) == sorted([agent, task])
        assert s.ended
    last = rest[-1].id
    gone = requests.get(_url(server), headers={**account.headers, "Last-Event-ID": last}, params=_ids(*three))
    assert (gone.status_code, gone.content, gone.headers["Content-Type"]) == (204, b"", "text/event-stream")


def test_a_token_resumes_every_execution_with_nothing_lost_or_repeated(server, account, producer, three):
    workflow, agent, task = map(_exec, three)
    for exec_id in (workflow, agent, task):
        append(producer, exec_id, "warning", "warning")
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        first = [s.next_frame() for _ in range(6)]
    token = first[-1].id
    for exec_id in (workflow, agent, task):
        append(producer, exec_id, "warning")
    # The same executions listed in another order: the token holds for the list, not its order.
    headers = {**account.headers, "Last-Event-ID": token}
    with Stream(_url(server), headers, _ids(*reversed(three))) as s:
        for exec_id in (workflow, agent, task):
            producer.append_events(exec_id, [COMPLETE])
        second = s.rest()
    seen = _by_execution(first)
    for exec_id, ids in _by_execution(second).items():
        seen.setdefault(exec_id, []).extend(ids)
    assert seen == {workflow: [1, 2, 3, 4], agent: [1, 2, 3, 4], task: [1, 2, 3, 4]}


def test_the_token_travels_in_the_query_and_zero_starts_from_the_beginning(server, account, producer, three):
    workflow = _exec(three[0])
    append(producer, workflow, "workflow_start", "warning")
    with Stream(_url(server), account.headers, {**_ids(*three), "last_event_id": "0"}) as s:
        frames = s.frames_until(lambda f: f.json["id"] == 2)
    with Stream(_url(server), account.headers, {**_ids(*three), "last_event_id": frames[0].id}) as s:
        append(producer, workflow, "warning")
        assert [f.json["id"] for f in s.frames_until(lambda f: f.json["id"] == 3)] == [2, 3]


def test_text_chunks_are_json_envelopes_without_an_id(server, account, producer, three):
    agent = _exec(three[1])
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        append(producer, agent, "warning")  # once it arrives, the stream is live on the agent
        s.next_frame()
        response = requests.post(
            server.api(f"/executions/agents/{agent}/chunks"), json={"text": "hel\nlo"}, headers=account.headers
        )
        assert response.status_code == 202
        chunk = s.next_frame()
    assert (chunk.event, chunk.id) == ("llm_chunk", None)
    assert chunk.json == {"type": "llm_chunk", "exec_id": agent, "kind": "agent", "data": {"content": "hel\nlo"}}


def test_the_events_filter_holds_per_execution_and_terminal_events_always_go(server, account, producer, three):
    workflow, agent, task = map(_exec, three)
    append(producer, workflow, "workflow_start", "warning")
    append(producer, agent, "warning")
    producer.append_events(agent, [COMPLETE])
    append(producer, task, "warning")
    producer.append_events(task, [COMPLETE])
    with Stream(_url(server), account.headers, {**_ids(*three), "events": "workflow_start"}) as s:
        frames = [s.next_frame() for _ in range(3)]
    assert sorted((f.json["exec_id"], f.event) for f in frames) == sorted(
        [(workflow, "workflow_start"), (agent, "complete"), (task, "complete")]
    )


def test_a_cursor_ahead_resets_naming_its_execution(server, account, producer, three):
    workflow = _exec(three[0])
    append(producer, workflow, "workflow_start", "warning")
    entries = canonical(three)
    positions = [9 if entry == three[0] else 0 for entry in entries]
    token = Cursors(SECRET).token(entries, positions)
    headers = {**account.headers, "Last-Event-ID": token}
    with Stream(_url(server), headers, _ids(*three)) as s:
        reset = s.next_frame()
        replay = s.frames_until(lambda f: f.json.get("id") == 2)
    assert reset.event == "stream_reset"
    assert reset.json == {
        "reason": "cursor_ahead",
        "newest_id": 2,
        "oldest_id": 1,
        "exec_id": workflow,
        "kind": "workflow",
    }
    assert [f.json["id"] for f in replay] == [1, 2]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "ids"),
        ({"ids": ""}, "ids"),
        ({"ids": "workflows/a,workflows/a"}, "listed twice"),
        ({"ids": "workflows-a"}, "segment/exec_id"),
        ({"ids": "jobs/a"}, "segment/exec_id"),
        ({"ids": ",".join(f"workflows/e{n}" for n in range(101))}, "at most 100"),
        ({"ids": "workflows/a", "last_event_id": "12"}, "cursor token"),
        ({"ids": "workflows/a", "poll_ms": "5"}, "poll_ms"),
        ({"ids": "workflows/a", "events": "Bad-Type"}, "event type"),
    ],
)
def test_a_malformed_request_is_400_naming_what_is_wrong(server, account, params, fragment):
    response = requests.get(_url(server), headers=account.headers, params=params, timeout=10)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_a_token_of_another_list_or_a_corrupted_one_is_400(server, account, producer, three):
    append(producer, _exec(three[0]), "warning")
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        token = s.next_frame().id
    corrupted = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for ids, cursor in ((three[:2], token), (three, corrupted), (three, token + "x")):
        response = requests.get(
            _url(server), headers={**account.headers, "Last-Event-ID": cursor}, params=_ids(*ids), timeout=10
        )
        assert response.status_code == 400, cursor
        assert "cursor token" in response.json()["error"]["message"]


def test_any_unknown_or_invisible_entry_is_the_404_of_an_unknown_execution(server, auth, producer, account, three):
    other = auth.user()
    hidden = producer.create_execution("workflow", "other's", other.user.get_id())["exec_id"]
    plain = requests.get(server.api("/executions/workflows/nope/stream"), headers=account.headers, timeout=10)
    for extra in (f"workflows/{hidden}", "workflows/nope", f"agents/{_exec(three[0])}", "tasks/bad id"):
        response = requests.get(_url(server), headers=account.headers, params=_ids(*three, extra), timeout=10)
        assert (response.status_code, response.content) == (404, plain.content), extra


def test_anonymous_is_401(server, three):
    assert requests.get(_url(server), params=_ids(*three), timeout=10).status_code == 401


def test_a_ticket_admits_exactly_its_list_of_executions(server, account, producer, three):
    asked = requests.post(server.api("/stream-tickets"), json={"ids": three}, headers=account.headers, timeout=10)
    assert asked.status_code == 201 and asked.headers["Cache-Control"] == "no-store"
    ticket = asked.json()["ticket"]
    append(producer, _exec(three[0]), "warning")
    # Without any other credential, in any order of the same list.
    with Stream(_url(server), params={**_ids(*reversed(three)), "ticket": ticket}) as s:
        assert s.next_frame().json["exec_id"] == _exec(three[0])
    for params in (_ids(*three[:2]), _ids(*three, "workflows/another")):
        refused = requests.get(_url(server), params={**params, "ticket": ticket}, timeout=10)
        assert refused.status_code == 401 and "stream-tickets" in refused.json()["error"]["message"]
    single = requests.get(server.api(f"/executions/{three[0]}/stream"), params={"ticket": ticket}, timeout=10)
    assert single.status_code == 401
    one = requests.post(server.api(f"/executions/{three[0]}/stream-ticket"), headers=account.headers, timeout=10)
    as_list = requests.get(_url(server), params={**_ids(three[0]), "ticket": one.json()["ticket"]}, timeout=10)
    assert as_list.status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [({"ids": []}, 422), ({"ids": ["workflows/a", "workflows/a"]}, 422), ({"ids": "workflows/a"}, 422), ({}, 422)],
)
def test_a_ticket_request_with_a_bad_list_is_refused(server, account, body, status):
    response = requests.post(server.api("/stream-tickets"), json=body, headers=account.headers, timeout=10)
    assert response.status_code == status


def test_a_ticket_for_a_list_with_an_invisible_execution_is_404(server, auth, producer, account, three):
    hidden = producer.create_execution("workflow", "other's", auth.user().user.get_id())["exec_id"]
    body = {"ids": [*three, f"workflows/{hidden}"]}
    response = requests.post(server.api("/stream-tickets"), json=body, headers=account.headers, timeout=10)
    assert response.status_code == 404


def test_the_stream_holds_one_slot_however_many_executions_it_lists(server, account, db, three):
    def counted() -> int:
        with db.autocommit() as cur:
            cur.execute(
                "SELECT coalesce(sum(streams), 0) FROM stream_counts WHERE user_id = %s", (account.user.get_id(),)
            )
            return int(cur.fetchone()[0])

    with Stream(_url(server), account.headers, _ids(*three)) as s:
        assert s.next_item() is not None
        assert counted() == 1


def test_a_hundred_ids_of_64_characters_fit_the_request_line(server, account, producer):
    owner = account.user.get_id()
    entries = []
    for _ in range(100):
        exec_id = secrets.token_hex(32)
        producer.create_execution("workflow", "many", owner, exec_id=exec_id)
        entries.append(f"workflows/{exec_id}")
    asked = requests.post(server.api("/stream-tickets"), json={"ids": entries}, headers=account.headers, timeout=10)
    params = {**_ids(*entries), "ticket": asked.json()["ticket"]}
    with Stream(_url(server), params=params) as s:
        assert s.response.status_code == 200
        assert s.next_item().retry == 3000
        assert s.next_item() == "connected"


def test_a_revoked_token_ends_the_stream_within_a_heartbeat(server, auth, producer, db, three):
    owner = auth.user()
    mine = [f"workflows/{producer.create_execution('workflow', 'm', owner.user.get_id())['exec_id']}" for _ in range(3)]
    token = auth.token(owner, ["read"])
    with Stream(_url(server), auth.bearer(token), _ids(*mine)) as s:
        assert s.next_item().retry is not None and s.next_item() == "connected"
        with db.transaction() as cur:
            accounts.revoke_token(cur, accounts.token_prefix(token))
        s.ends_within(3)  # one heartbeat (1 s) and the request in flight
    ended = [line for line in server.log_text().splitlines() if "kind=multiplex" in line and "reason=revoked" in line]
    assert ended and "executions=3" in ended[-1] and "last_id=0,0,0" in ended[-1]
    assert f"exec_id={','.join(sorted(entry.split('/')[1] for entry in mine))} " in ended[-1]


def test_a_long_history_beside_short_ones_replays_whole_past_its_share_of_the_first_read(
    server, account, producer, three
):
    # The first read gives each execution a third of a page (1,666 events): the rest comes page by page.
    workflow, agent, task = map(_exec, three)
    for _ in range(2):
        producer.append_events(workflow, [{"type": "progress", "data": {"n": n}} for n in range(900)])
    append(producer, agent, "warning")
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        frames = [s.next_frame() for _ in range(1801)]
        append(producer, task, "warning")
        live = s.next_frame()
    assert _by_execution(frames) == {workflow: list(range(1, 1801)), agent: [1]}
    assert (live.json["exec_id"], live.json["id"]) == (task, 1)


def test_metrics_count_the_stream_as_multiplex_and_its_live_frames_commit_to_send(server, account, producer, three):
    before = Metrics(server.url)
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        assert s.next_item().retry is not None and s.next_item() == "connected"
        during = Metrics(server.url)
        append(producer, _exec(three[0]), "warning")
        s.next_frame()
        for exec_id in map(_exec, three):
            producer.append_events(exec_id, [COMPLETE])
        s.rest()
    after = Metrics(server.url)
    opened = "streamapp_streams_opened_total"
    assert during(opened, kind="multiplex") == before(opened, kind="multiplex") + 1
    assert during("streamapp_open_streams", kind="multiplex") == before("streamapp_open_streams", kind="multiplex") + 1
    assert after("streamapp_open_streams", kind="multiplex") == before("streamapp_open_streams", kind="multiplex")
    assert during(opened, kind="workflow") == before(opened, kind="workflow")  # not one per execution
    sent = "streamapp_events_sent_total"
    assert after(sent, type="complete") - before(sent, type="complete") == 3
    committed = "streamapp_commit_to_send_seconds_count"
    assert after(committed) >= before(committed) + 2
    # The hub wrote the live frames to the waiting stream's socket itself, where it may.
    direct = after("streamapp_direct_writes_total") - before("streamapp_direct_writes_total")
    assert direct >= 1 if server.direct else direct == 0


def test_an_expired_cursor_resets_its_execution_and_a_pruned_ended_one_is_done(server, account, producer, db, three):
    workflow, agent, task = map(_exec, three)
    append(producer, workflow, "warning", "warning", "warning", "warning")
    append(producer, agent, "warning")
    producer.append_events(agent, [COMPLETE])
    with db.transaction() as cur:  # what retention does: the oldest of one, all of an ended one
        cur.execute("DELETE FROM events WHERE exec_id = %s AND id <= 2", (workflow,))
        cur.execute("DELETE FROM events WHERE exec_id = %s", (agent,))
    entries = canonical(three)
    token = Cursors(SECRET).token(entries, [1 if e in (three[0], three[1]) else 0 for e in entries])
    with Stream(_url(server), {**account.headers, "Last-Event-ID": token}, _ids(*three)) as s:
        frames = [s.next_frame() for _ in range(4)]
        append(producer, task, "warning")
        live = s.next_frame()
    resets = {f.json["exec_id"]: f.json for f in frames if f.event == "stream_reset"}
    assert resets == {
        agent: {"reason": "cursor_expired", "newest_id": 2, "oldest_id": 0, "exec_id": agent, "kind": "agent"},
        workflow: {"reason": "cursor_expired", "newest_id": 4, "oldest_id": 3, "exec_id": workflow, "kind": "workflow"},
    }
    assert _by_execution(frames) == {workflow: [3, 4]}
    assert (live.json["exec_id"], live.json["id"]) == (task, 1)
    # The agent's reset moved its position to its terminal id: a reconnect after it lists it as done.
    positions = Cursors(SECRET).positions(live.id, entries)
    assert positions[entries.index(three[1])] == 2


def test_a_quiet_stream_sends_heartbeats(server, account, three):
    with Stream(_url(server), account.headers, _ids(*three)) as s:
        items = [s.next_item(3) for _ in range(3)]  # retry, connected, then a ping within a heartbeat (1 s)
    assert items[1:] == ["connected", "ping"]
