"""The multiplexed stream's admission (SPEC §5.6, §5.4, §7): 404 before 204 before 429, one slot for
the whole list, given back at the end, and a host's ``authorize`` hook asked for every execution."""

from __future__ import annotations

import json

import gevent
from prometheus_client import REGISTRY

from streamapp.cursor import Cursors
from streamapp.cursor import canonical
from tests.conftest import SECRET
from tests.conftest import until
from tests.test_stream import _counted
from tests.test_stream import _given_back_by_now
from tests.test_stream import _slots

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _url(*entries: str, prefix: str = "/api/v0") -> str:
    return f"{prefix}/streams?ids={','.join(entries)}"


def _workflows(producer, owner: str, n: int) -> list[str]:
    return [f"workflows/{producer.create_execution('workflow', 'm', owner)['exec_id']}" for _ in range(n)]


def _token(entries: list[str], positions: dict[str, int]) -> str:
    listed = canonical(entries)
    return Cursors(SECRET).token(listed, [positions.get(entry, 0) for entry in listed])


def test_every_execution_ended_at_the_token_is_204_and_takes_no_slot(app, db, account, producer):
    entries = _workflows(producer, account.user.get_id(), 2)
    for entry in entries:
        producer.append_events(entry.split("/")[1], [COMPLETE])
    token = _token(entries, dict.fromkeys(entries, 1))
    response = app.test_client().get(_url(*entries), headers={**account.headers, "Last-Event-ID": token})
    assert (response.status_code, response.content_type) == (204, "text/event-stream")
    assert _counted(db, account.user.get_id()) == 0 and _slots(app).held == {}
    # One of them not delivered yet: the stream runs, for that one.
    token = _token(entries, {entries[0]: 1})
    response = gevent.spawn(
        app.test_client().get, _url(*entries), headers={**account.headers, "Last-Event-ID": token}
    ).get()
    body = response.get_data()
    assert response.status_code == 200 and body.count(b"event: complete") == 1
    assert entries[1].split("/")[1].encode() in body


def test_one_slot_for_the_list_given_back_when_every_execution_ended(app, db, account, producer):
    entries = _workflows(producer, account.user.get_id(), 5)
    client = app.test_client()
    response = client.get(_url(*entries), headers=account.headers)
    body = iter(response.response)
    assert next(body).startswith(b"retry:")
    assert _counted(db, account.user.get_id()) == 1 and _slots(app).held == {account.user.get_id(): 1}
    for entry in entries:
        producer.append_events(entry.split("/")[1], [COMPLETE])
    rest = gevent.spawn(b"".join, body).get()
    assert rest.count(b"event: complete") == 5
    _given_back_by_now()
    assert _counted(db, account.user.get_id()) == 0 and _slots(app).held == {}


def test_past_the_limit_429_but_404_and_204_first(make_client, db, auth, producer):
    user, stranger = auth.user(), auth.user()
    client = make_client(max_streams_per_user=1)
    mine = _workflows(producer, user.user.get_id(), 2)
    theirs = _workflows(producer, stranger.user.get_id(), 1)
    first = client.get(_url(*mine), headers=user.headers)
    assert first.status_code == 200
    refused = client.get(_url(*mine), headers=user.headers)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_streams"
    assert client.get(_url(*mine, *theirs), headers=user.headers).status_code == 404
    ended = _workflows(producer, user.user.get_id(), 1)
    producer.append_events(ended[0].split("/")[1], [COMPLETE])
    done = {"Last-Event-ID": _token(ended, {ended[0]: 1})}
    assert client.get(_url(*ended), headers={**user.headers, **done}).status_code == 204
    assert _counted(db, user.user.get_id()) == 1
    first.close()
    assert client.get(_url(*mine), headers=user.headers).status_code == 200


def test_a_hosts_hook_is_asked_for_every_listed_execution(public_host, db, producer):
    public = f"workflows/{producer.create_execution('workflow', 'public-job', 'alice')['exec_id']}"
    private = f"workflows/{producer.create_execution('workflow', 'private-job', 'alice')['exec_id']}"
    client, bob = public_host.test_client(), {"X-User": "bob"}
    assert client.get(_url(public, private, prefix="/p"), headers=bob).status_code == 404
    assert _counted(db, "bob") == 0
    first = client.get(_url(public, prefix="/p"), headers=bob)
    assert first.status_code == 200 and _counted(db, "bob") == 1
    assert client.get(_url(public, prefix="/p"), headers=bob).status_code == 429
    first.close()
    _given_back_by_now()
    assert _counted(db, "bob") == 0 and _slots(public_host).held == {}


def test_a_server_without_a_secret_key_answers_503(make_client, account, producer):
    client = make_client(secret_key=None)
    entries = _workflows(producer, account.user.get_id(), 1)
    response = client.get(_url(*entries), headers=account.headers)
    assert response.status_code == 503 and "SECRET_KEY" in response.json["error"]["message"]


def test_a_shutdown_ends_the_stream_with_a_jittered_retry_and_its_slot_back(make_client, db, account, producer):
    client = make_client()
    entries = _workflows(producer, account.user.get_id(), 3)
    response = client.get(_url(*entries), headers=account.headers)
    body = iter(response.response)
    assert next(body).startswith(b"retry:")
    assert _counted(db, account.user.get_id()) == 1
    client.application.extensions["streamapp"].hub.stop()
    rest = gevent.spawn(b"".join, body).get()
    assert rest.startswith(b"retry:")  # SPEC §5.4: spread reconnects
    assert _counted(db, account.user.get_id()) == 0
    refused = client.get(_url(*entries), headers=account.headers)
    assert refused.status_code == 503 and "Retry-After" in refused.headers


def test_a_lane_that_falls_behind_rereads_its_table_with_nothing_lost(make_client, account, producer):
    client = make_client()
    entries = _workflows(producer, account.user.get_id(), 2)
    busy, quiet = (entry.split("/")[1] for entry in entries)
    response = client.get(_url(*entries), headers=account.headers)
    chunks: list[bytes] = []
    reader = gevent.spawn(chunks.extend, response.response)  # the body on a greenlet, as gunicorn runs it
    hub = client.application.extensions["streamapp"].hub
    until(lambda: all(hub.topics._topics.get(e) for e in (busy, quiet)), what="both lanes subscribed")
    for sub in hub.topics._topics[busy].subscribers:
        sub.limit = 1  # the lane's queue holds one event: a batch of five overflows it
    overflows = REGISTRY.get_sample_value("streamapp_stream_overflows_total") or 0
    producer.append_events(busy, [{"type": "progress", "data": {"n": n}} for n in range(5)])
    producer.append_events(busy, [COMPLETE])
    producer.append_events(quiet, [COMPLETE])
    reader.join(timeout=20)
    body = b"".join(chunks)
    ids = [
        int(json.loads(line[6:])["id"])
        for line in body.split(b"\n")
        if line.startswith(b"data: {") and busy.encode() in line
    ]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert body.count(b"event: complete") == 2
    assert (REGISTRY.get_sample_value("streamapp_stream_overflows_total") or 0) > overflows  # it did overflow
