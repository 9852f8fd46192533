"""streamapp.client.follow against a live gunicorn (SPEC §5, §6; issue 9)."""

from __future__ import annotations

import threading
import time
import typing as t

import pytest
import requests

from streamapp import client
from streamapp.client import follow
from tests.conftest import live_server
from tests.conftest import new_exec_id
from tests.sse import Stream
from tests.test_client import _run

pytestmark = pytest.mark.live

COMPLETE = ("complete", {"status": "SUCCESS", "output": "done"})
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def _url(server, exec_id: str, kind: str = "workflows") -> str:
    return server.api(f"/executions/{kind}/{exec_id}/stream")


def _append(producer, exec_id, *events):
    return producer.append_events(exec_id, [{"type": t, "data": d} for t, d in events])


def _status(value: str) -> tuple[str, dict[str, str]]:
    return ("workflow_status", {"status": value})


def _post(server, account, path: str, body: dict[str, t.Any]) -> requests.Response:
    r = requests.post(server.api(path), json=body, headers=account.headers, timeout=10)
    assert r.status_code in (201, 202), r.text
    return r


def test_follows_a_workflow_to_complete_with_every_id_once(server, account, workflow, producer):
    _append(producer, workflow, ("workflow_start", {"workflow_id": "w"}), *[_status("RUNNING")] * 4, COMPLETE)
    statuses: list[client.Status] = []
    events = _run(lambda: list(follow(_url(server, workflow), token=account.token, on_status=statuses.append)))
    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.type for e in events] == ["workflow_start"] + ["workflow_status"] * 4 + ["complete"]
    assert events[1].data == {"status": "RUNNING"} and events[-1].data == COMPLETE[1]
    assert events[0].envelope is not None and events[0].envelope["exec_id"] == workflow
    assert events[-1].terminal and not events[0].terminal
    # Ends on the terminal event itself: no reconnect, no 204 round trip.
    assert [s.state for s in statuses] == ["connecting", "open", "closed"]


def test_live_events_arrive_until_terminal(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"))
    stream = follow(_url(server, workflow), token=account.token)
    assert _run(lambda: next(stream)).id == 1
    _append(producer, workflow, _status("PAUSED"), COMPLETE)
    assert [(e.id, e.type) for e in _run(lambda: list(stream))] == [(2, "workflow_status"), (3, "complete")]


def test_resume_with_last_event_id(server, account, workflow, producer):
    _append(producer, workflow, *[_status("RUNNING")] * 5, COMPLETE)
    events = _run(lambda: list(follow(_url(server, workflow), token=account.token, last_event_id=3)))
    assert [e.id for e in events] == [4, 5, 6]


def test_events_filter_goes_in_the_query_and_terminal_still_comes(server, account, workflow, producer):
    warning = ("warning", {"code": "slow", "message": "slow"})
    _append(producer, workflow, ("workflow_start", {"workflow_id": "w"}), _status("RUNNING"), warning, COMPLETE)
    url = _url(server, workflow) + "?poll_ms=500"
    events = _run(lambda: list(follow(url, token=account.token, events=["warning"])))
    assert [(e.id, e.type) for e in events] == [(3, "warning"), (4, "complete")]
    events = _run(lambda: list(follow(url, token=account.token, events="warning,workflow_start")))
    assert [e.id for e in events] == [1, 3, 4]
    url = _url(server, workflow) + "?events=workflow_status"  # replaced, not added to
    events = _run(lambda: list(follow(url, token=account.token, events=["warning"])))
    assert [(e.id, e.type) for e in events] == [(3, "warning"), (4, "complete")]


def test_finished_execution_answers_204_and_follow_ends_cleanly(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"), COMPLETE)
    statuses: list[client.Status] = []
    stream = follow(_url(server, workflow), token=account.token, last_event_id=2, on_status=statuses.append)
    assert _run(lambda: list(stream)) == []
    assert [s.state for s in statuses] == ["connecting", "closed"]


@pytest.mark.parametrize("token", [None, "sa_wrong_token"])
def test_401_raises_at_once(server, workflow, token):
    statuses: list[client.Status] = []
    with pytest.raises(client.AuthenticationError) as caught:
        _run(lambda: list(follow(_url(server, workflow), token=token, on_status=statuses.append)))
    assert (caught.value.status, caught.value.code) == (401, "not_authenticated")
    assert [s.state for s in statuses] == ["connecting"]  # never retried


def test_404_for_unknown_and_for_someone_elses_execution(server, auth, workflow):
    stranger = auth.user()
    for url in (_url(server, new_exec_id()), _url(server, workflow)):
        with pytest.raises(client.NotFoundError) as caught:
            _run(lambda url=url: list(follow(url, token=stranger.token)))
        assert caught.value.status == 404 and isinstance(caught.value, client.StatusError)


def test_400_is_a_bad_request_error(server, account, workflow):
    with pytest.raises(client.BadRequestError):
        _run(lambda: list(follow(_url(server, workflow) + "?poll_ms=5", token=account.token)))


def _agent(server, account, **body) -> str:
    return _post(server, account, "/executions/agents", {"name": "a", **body}).json()["exec_id"]


def _agent_events(server, account, exec_id: str, *events: tuple[str, dict[str, t.Any]]) -> None:
    body = {"events": [{"type": kind, "data": data} for kind, data in events]}
    _post(server, account, f"/executions/agents/{exec_id}/events", body)


def _agent_chunks(server, account, exec_id: str, **body: t.Any) -> None:
    _post(server, account, f"/executions/agents/{exec_id}/chunks", body)


def test_text_chunks_arrive_as_their_own_type_without_id(server, account):
    exec_id = _agent(server, account)
    _agent_events(server, account, exec_id, ("agent_status", {"status": "RUNNING"}))
    stream = follow(_url(server, exec_id, "agents"), token=account.token)
    # Replay comes after the stream subscribed: once event 1 is here, chunks reach it.
    assert _run(lambda: next(stream)).id == 1
    _agent_chunks(server, account, exec_id, chunks=["Hello, ", "42", "wor\r\nld"])
    _agent_events(server, account, exec_id, ("complete", {"status": "SUCCESS"}))
    rest = _run(lambda: list(stream))
    chunks = [e for e in rest if e.type == "llm_chunk"]
    assert [(e.id, e.data, e.text, e.envelope) for e in chunks] == [
        (None, "Hello, ", "Hello, ", None),
        (None, "42", "42", None),
        (None, "wor\nld", "wor\nld", None),
    ]
    assert [(e.id, e.type) for e in rest if e.type != "llm_chunk"] == [(2, "complete")]


def test_json_mode_chunks_keep_their_envelope(server, account):
    exec_id = _agent(server, account, output_schema=SCHEMA)
    _agent_events(server, account, exec_id, ("agent_status", {"status": "RUNNING"}))
    stream = follow(_url(server, exec_id, "agents"), token=account.token)
    assert _run(lambda: next(stream)).id == 1
    _agent_chunks(server, account, exec_id, text="par")
    _agent_events(server, account, exec_id, ("complete", {"status": "SUCCESS", "output": {"answer": "x"}}))
    chunk, complete = _run(lambda: list(stream))
    assert (chunk.type, chunk.id, chunk.data, chunk.text) == ("llm_chunk", None, {"content": "par"}, "par")
    assert chunk.envelope is not None and chunk.envelope["exec_id"] == exec_id
    assert (complete.id, complete.data["output"]) == (2, {"answer": "x"})


def test_cursor_ahead_resets_and_replays(server, account, workflow, producer):
    _append(producer, workflow, _status("RUNNING"), _status("PAUSED"))
    stream = follow(_url(server, workflow), token=account.token, last_event_id=9)
    first = _run(lambda: [next(stream) for _ in range(3)])
    assert [(e.id, e.type) for e in first] == [(0, "stream_reset"), (1, "workflow_status"), (2, "workflow_status")]
    assert first[0].data == {"reason": "cursor_ahead", "newest_id": 2, "oldest_id": 1}
    _append(producer, workflow, COMPLETE)
    assert [e.id for e in _run(lambda: list(stream))] == [3]


def test_server_side_cuts_lose_and_repeat_nothing(database, tmp_path, auth, producer):
    """Streams end every second (lifetime) while events keep coming: each id once, in order."""
    env = {"STREAMAPP_STREAM_LIFETIME_S": "1", "STREAMAPP_HEARTBEAT_S": "0.5", "STREAMAPP_RETRY_MS": "100"}
    account = auth.user()
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    total = 40

    def produce() -> None:
        for _ in range(total - 1):
            _append(producer, exec_id, _status("RUNNING"))
            time.sleep(0.05)  # pacing, so the appends span several stream lifetimes
        _append(producer, exec_id, COMPLETE)

    with live_server(database, tmp_path, env) as live:
        statuses: list[client.Status] = []
        stream = follow(_url(live, exec_id), token=account.token, max_wait=20, on_status=statuses.append)
        threading.Thread(target=produce, daemon=True).start()
        events = _run(lambda: list(stream), deadline_s=60)
    assert [e.id for e in events] == list(range(1, total + 1))
    assert events[-1].type == "complete"
    ends = [s for s in statuses if s.state == "reconnecting"]
    assert ends and all(s.reason == "the server ended the stream" for s in ends)


def test_retry_after_on_429_is_honoured(database, tmp_path, auth, producer):
    env = {"STREAMAPP_MAX_STREAMS_PER_USER": "1", "STREAMAPP_RETRY_MS": "500", "STREAMAPP_HEARTBEAT_S": "1"}
    account = auth.user()
    held = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    wanted = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    _append(producer, wanted, _status("RUNNING"), COMPLETE)
    with live_server(database, tmp_path, env) as live:
        holder = Stream(_url(live, held), account.headers)
        assert holder.next_item().retry is not None  # the slot is taken
        statuses: list[client.Status] = []

        def on_status(status: client.Status) -> None:
            statuses.append(status)
            if status.state == "reconnecting":
                holder.close()  # give the slot back while the client waits

        try:
            stream = follow(_url(live, wanted), token=account.token, max_wait=30, on_status=on_status)
            events = _run(lambda: list(stream), deadline_s=45)
        finally:
            holder.close()
    assert [e.id for e in events] == [1, 2]
    refused = [s for s in statuses if s.state == "reconnecting"]
    assert refused[0].reason is not None and refused[0].reason.startswith("HTTP 429")
    assert refused[0].retry_after is not None and refused[0].retry_after >= 1
    assert refused[0].delay is not None and refused[0].delay >= refused[0].retry_after


def test_many_executions_across_server_side_cuts_each_event_once(database, tmp_path, auth, producer):
    """SPEC §5.6 from Python: cut every second, resumed with the cursor token; over once all have ended."""
    env = {"STREAMAPP_STREAM_LIFETIME_S": "1", "STREAMAPP_HEARTBEAT_S": "0.5", "STREAMAPP_RETRY_MS": "100"}
    account = auth.user()
    owner = account.user.get_id()
    exec_ids = [producer.create_execution("workflow", "wf", owner)["exec_id"] for _ in range(3)]
    total = 12

    def produce() -> None:
        for _ in range(total - 1):
            for exec_id in exec_ids:
                _append(producer, exec_id, _status("RUNNING"))
            time.sleep(0.15)
        for exec_id in exec_ids:
            _append(producer, exec_id, COMPLETE)
            time.sleep(0.5)  # one ended, the others still running: the stream goes on

    with live_server(database, tmp_path, env) as live:
        url = live.api("/streams?ids=" + ",".join(f"workflows/{exec_id}" for exec_id in exec_ids))
        statuses: list[client.Status] = []
        stream = follow(url, token=account.token, max_wait=20, on_status=statuses.append)
        threading.Thread(target=produce, daemon=True).start()
        events = _run(lambda: list(stream), deadline_s=60)
    for exec_id in exec_ids:
        assert [e.id for e in events if e.exec_id == exec_id] == list(range(1, total + 1))
    assert [e.exec_id for e in events if e.terminal] == exec_ids
    assert events[-1].terminal and statuses[-1].state == "closed"
    assert isinstance(statuses[-1].last_id, str)
    assert any(s.reason == "the server ended the stream" for s in statuses if s.state == "reconnecting")


def test_many_executions_resume_from_a_token(server, account, producer):
    owner = account.user.get_id()
    exec_ids = [producer.create_execution("workflow", "wf", owner)["exec_id"] for _ in range(2)]
    url = server.api("/streams?ids=" + ",".join(f"workflows/{exec_id}" for exec_id in exec_ids))
    for exec_id in exec_ids:
        _append(producer, exec_id, _status("RUNNING"), _status("PAUSED"))
    statuses: list[client.Status] = []
    stream = follow(url, token=account.token, on_status=statuses.append)
    first = _run(lambda: [next(stream) for _ in range(4)])
    stream.close()
    token = first[-1].token
    assert isinstance(token, str) and sorted(e.id for e in first) == [1, 1, 2, 2]
    for exec_id in exec_ids:
        _append(producer, exec_id, COMPLETE)
    rest = _run(lambda: list(follow(url, token=account.token, last_event_id=token)))
    assert sorted((e.exec_id, e.id) for e in rest) == sorted((exec_id, 3) for exec_id in exec_ids)
    # Resumed once more from the end: 204, and no event.
    assert _run(lambda: list(follow(url, token=account.token, last_event_id=rest[-1].token))) == []
