"""The stream endpoint over a live gunicorn (SPEC §5)."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import live_server
from tests.conftest import new_exec_id
from tests.sse import Stream
from tests.sse import parse

pytestmark = pytest.mark.live


@pytest.fixture(scope="module", params=["direct", "generator"])
def server(request, database, tmp_path_factory):
    """Both delivery paths: frames written straight to parked sockets, and the plain generator."""
    env = {**SHARED_SERVER_ENV, "STREAMAPP_DIRECT_WRITES": str(request.param == "direct").lower()}
    with live_server(database, tmp_path_factory.mktemp(request.param), env) as live:
        live.direct = request.param == "direct"
        yield live


def _url(server, exec_id: str, kind: str = "workflows") -> str:
    return server.api(f"/executions/{kind}/{exec_id}/stream")


def _append(producer, exec_id, *events):
    return producer.append_events(exec_id, [{"type": t, "data": d} for t, d in events])


def _status(value):
    return ("workflow_status", {"status": value})


COMPLETE = ("complete", {"status": "SUCCESS"})


def test_headers_and_prelude_come_first(server, account, workflow):
    with Stream(_url(server, workflow), account.headers) as s:
        r = s.response
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache, no-transform"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert "Content-Length" not in r.headers
        assert "Content-Encoding" not in r.headers
        first = s.next_item()
        assert first.retry == 3000
        assert s.next_item() == "connected"


def test_replay_then_live_until_terminal(server, account, workflow, producer):
    _append(producer, workflow, ("workflow_start", {"workflow_id": "w"}), _status("RUNNING"))
    with Stream(_url(server, workflow), account.headers) as s:
        assert [f.id for f in s.frames_until(lambda f: f.id == "2")] == ["1", "2"]
        _append(producer, workflow, _status("PAUSED"))
        live = s.next_frame()
        assert (live.id, live.event, live.json["data"]) == ("3", "workflow_status", {"status": "PAUSED"})
        _append(producer, workflow, COMPLETE)
        assert [f.event for f in s.rest()] == ["complete"]
        assert s.ended


def test_envelope_fields(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"), COMPLETE)
    frames, _ = parse(requests.get(_url(server, workflow), headers=account.headers, timeout=10).content)
    envelope = frames[0].json
    assert set(envelope) == {"id", "type", "ts", "exec_id", "kind", "data"}
    assert (envelope["id"], envelope["exec_id"], envelope["kind"]) == (1, workflow, "workflow")
    assert envelope["ts"].endswith("Z")


def test_the_header_wins_even_over_a_bad_query_cursor(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"), COMPLETE)
    headers = {**account.headers, "Last-Event-ID": "1"}
    r = requests.get(_url(server, workflow), headers=headers, params={"last_event_id": "junk"}, timeout=10)
    assert [f.id for f in parse(r.content)[0]] == ["2"]


@pytest.mark.parametrize("how", ["header", "query", "both"])
def test_resume_from_cursor(server, account, workflow, producer, how):
    _append(producer, workflow, *[_status("RUNNING")] * 5, COMPLETE)
    headers, params = dict(account.headers), {}
    if how in ("header", "both"):
        headers["Last-Event-ID"] = "3"
    if how in ("query", "both"):
        params["last_event_id"] = "1" if how == "both" else "3"  # the header wins
    r = requests.get(_url(server, workflow), headers=headers, params=params, timeout=10)
    frames, _ = parse(r.content)
    assert [f.id for f in frames] == ["4", "5", "6"]


def test_filter_sends_only_chosen_types_and_always_terminal(server, account, workflow, producer):
    _append(
        producer,
        workflow,
        ("workflow_start", {"workflow_id": "w"}),
        _status("RUNNING"),
        ("warning", {"code": "slow", "message": "slow"}),
        COMPLETE,
    )
    r = requests.get(_url(server, workflow), headers=account.headers, params={"events": "warning"}, timeout=10)
    assert [(f.id, f.event) for f in parse(r.content)[0]] == [("3", "warning"), ("4", "complete")]


def test_finished_stream_answers_204(server, account, workflow, producer):
    _append(producer, workflow, COMPLETE)
    for cursor in ("1", "7"):
        r = requests.get(_url(server, workflow), headers={**account.headers, "Last-Event-ID": cursor}, timeout=10)
        assert r.status_code == 204 and r.content == b""
        assert r.headers["Content-Type"].startswith("text/event-stream")


def test_cursor_ahead_resets_and_replays(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"), _status("PAUSED"))
    with Stream(_url(server, workflow), {**account.headers, "Last-Event-ID": "9"}) as s:
        reset = s.next_frame()
        assert (reset.id, reset.event) == ("0", "stream_reset")
        assert json.loads(reset.data) == {"reason": "cursor_ahead", "newest_id": 2, "oldest_id": 1}
        assert [s.next_frame().id, s.next_frame().id] == ["1", "2"]


def test_heartbeat_comments(server, account, workflow):
    with Stream(_url(server, workflow), account.headers) as s:
        items = [s.next_item(5) for _ in range(3)]
        assert items[1:] == ["connected", "ping"]


@pytest.mark.parametrize(
    "text",
    [
        "a\nb",
        "a\rb",
        "a\r\nb",
        "ends with CR\r",
        "\r\n\r\n",
        "x\n\nevent: complete\nid: 999\ndata: injected",
        "data: fake\r\n\r\nid: 5",
    ],
)
def test_payload_cannot_break_framing(server, account, workflow, producer, text):
    _append(producer, workflow, ("tool_call", {"tool_call_id": "1", "tool_name": "t", "status": text}), COMPLETE)
    frames, _ = parse(requests.get(_url(server, workflow), headers=account.headers, timeout=10).content)
    assert [(f.id, f.event) for f in frames] == [("1", "tool_call"), ("2", "complete")]
    assert frames[0].json["data"]["status"] == text


def test_custom_type_passes_through(server, account, workflow, producer):
    _append(producer, workflow, ("deploy_step", {"anything": [1, 2]}), COMPLETE)
    frames, _ = parse(requests.get(_url(server, workflow), headers=account.headers, timeout=10).content)
    assert frames[0].event == "deploy_step" and frames[0].json["data"] == {"anything": [1, 2]}


@pytest.mark.parametrize(
    "params, headers, fragment",
    [
        ({"last_event_id": "-1"}, {}, "last_event_id"),
        ({"last_event_id": "abc"}, {}, "last_event_id"),
        ({"last_event_id": "1.5"}, {}, "last_event_id"),
        ({}, {"Last-Event-ID": "x"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "-3"}, "Last-Event-ID"),
        ({"events": "Bad"}, {}, "events"),
        ({"events": "a,,b"}, {}, "events"),
        ({"events": "a\nb"}, {}, "events"),
        ({"poll_ms": "100"}, {}, "poll_ms"),
        ({"poll_ms": "2001"}, {}, "poll_ms"),
        ({"poll_ms": "x"}, {}, "poll_ms"),
        ({"poll_ms": "+500"}, {}, "poll_ms"),
        ({"poll_ms": "5_00"}, {}, "poll_ms"),
        ({"last_event_id": "\u0663"}, {}, "last_event_id"),  # ARABIC-INDIC DIGIT THREE
        ({"last_event_id": " 5 "}, {}, "last_event_id"),
        ({"last_event_id": ["1", "2"]}, {}, "more than once"),
        ({"events": ["warning", "complete"]}, {}, "more than once"),
        ({"nope": "1"}, {}, "nope"),
        ({"token": "sa_x"}, {}, "ticket"),
        ({"access_token": "sa_x"}, {}, "ticket"),
    ],
)
def test_bad_parameters_answer_400(server, account, workflow, params, headers, fragment):
    r = requests.get(_url(server, workflow), headers={**account.headers, **headers}, params=params, timeout=10)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_request" and fragment in error["message"]


def test_anonymous_is_401(server, workflow):
    r = requests.get(_url(server, workflow), timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"


def test_not_yours_is_404_like_missing(server, auth, workflow):
    other = auth.user()
    theirs = requests.get(_url(server, workflow), headers=other.headers, timeout=10)
    missing = requests.get(_url(server, new_exec_id()), headers=other.headers, timeout=10)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content


def test_admin_reads_anyones(server, auth, workflow, producer):
    _append(producer, workflow, COMPLETE)
    admin = auth.user(admin=True)
    r = requests.get(_url(server, workflow), headers=admin.headers, timeout=10)
    assert r.status_code == 200 and parse(r.content)[0][0].event == "complete"


def test_wrong_kind_segment_is_404(server, account, workflow):
    for kind in ("agents", "things"):
        assert requests.get(_url(server, workflow, kind), headers=account.headers, timeout=10).status_code == 404


def test_live_frames_take_the_configured_path(server, account, workflow, producer):
    text = requests.get(server.url + "/metrics", timeout=5).text
    before = float(re.search(r"^streamapp_direct_writes_total (\S+)$", text, re.M).group(1))
    with Stream(_url(server, workflow), account.headers) as s:
        s.next_item(), s.next_item()
        _append(producer, workflow, _status("RUNNING"))
        assert s.next_frame().id == "1"
        _append(producer, workflow, _status("PAUSED"), COMPLETE)
        assert [f.id for f in s.rest()] == ["2", "3"]
    text = requests.get(server.url + "/metrics", timeout=5).text
    after = float(re.search(r"^streamapp_direct_writes_total (\S+)$", text, re.M).group(1))
    assert (after > before) == server.direct


def test_cursor_older_than_retention_resets_to_the_oldest_held(server, account, workflow, producer, db):
    _append(producer, workflow, *[_status("RUNNING")] * 5)
    with db.transaction() as cur:  # what a retention job would do
        cur.execute("DELETE FROM events WHERE exec_id = %s AND id <= 3", (workflow,))
    with Stream(_url(server, workflow), {**account.headers, "Last-Event-ID": "1"}) as s:
        reset = s.next_frame()
        assert (reset.id, reset.event) == ("3", "stream_reset")
        assert json.loads(reset.data) == {"reason": "cursor_expired", "newest_id": 5, "oldest_id": 4}
        assert [s.next_frame().id, s.next_frame().id] == ["4", "5"]


def test_cursor_behind_a_table_emptied_by_retention_resets(server, account, workflow, producer, db):
    _append(producer, workflow, *[_status("RUNNING")] * 3)
    with db.transaction() as cur:  # retention removed every event
        cur.execute("DELETE FROM events WHERE exec_id = %s", (workflow,))
    with Stream(_url(server, workflow), {**account.headers, "Last-Event-ID": "1"}) as s:
        reset = s.next_frame()
        assert (reset.id, reset.event) == ("3", "stream_reset")
        assert json.loads(reset.data)["reason"] == "cursor_expired"
        _append(producer, workflow, _status("PAUSED"))
        assert s.next_frame().id == "4"


def test_prelude_is_flushed_while_the_events_table_is_locked(server, account, workflow, producer, db):
    """SPEC §5: the first bytes go out before the replay query, however slow the database is."""
    _append(producer, workflow, _status("RUNNING"))
    with db.connection() as conn:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # the replay's SELECT waits
            with Stream(_url(server, workflow), {**account.headers, "Last-Event-ID": "0"}) as s:
                assert s.next_item().retry is not None and s.next_item() == "connected"
                conn.rollback()  # release: the replay goes on
                assert s.next_frame().id == "1"


def test_an_open_stream_keeps_its_slot_fresh_and_gives_it_back(server, account, workflow, db):
    """The per-user limit must count a stream for as long as it is open, on whichever worker (SPEC §7)."""

    def slot_rows():
        with db.transaction() as cur:
            cur.execute(
                "SELECT worker, seen_at FROM stream_counts WHERE user_id = %s AND streams > 0", (str(account.user.id),)
            )
            return cur.fetchall()

    with Stream(_url(server, workflow), account.headers) as s:
        assert s.next_item().retry is not None
        [(worker, first_seen)] = slot_rows()
        assert worker.count(":") == 2  # host:pid:random, the worker's id, never a placeholder
        deadline = time.monotonic() + 10
        while slot_rows()[0][1] == first_seen:  # the shared server's heartbeat is 1 s
            assert time.monotonic() < deadline, "the open stream's slot was never refreshed"
            time.sleep(0.1)
    deadline = time.monotonic() + 10
    while slot_rows():
        assert time.monotonic() < deadline, "the closed stream's slot was not given back"
        time.sleep(0.1)
