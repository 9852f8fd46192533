"""The stream view's admission (SPEC §5.4, §7): 404 before 204 before 429, and a slot held only by
a stream that runs — whether the database decided it with the lookup (the default rule) or a host's
``authorize`` hook did after it; and the admission from what the worker's hub knows, with no round
trip, which stands in for the database under the default rule only."""

from __future__ import annotations

import typing as t

import gevent
import gevent.lock

from streamapp import StreamApp
from streamapp import slots
from tests.conftest import host_app
from tests.conftest import until

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _url(exec_id: str, prefix: str = "/api/v0") -> str:
    return f"{prefix}/executions/workflows/{exec_id}/stream"


def _counted(db, user_id: str) -> int:
    """The user's streams as every worker sees them: the rows of ``stream_counts``."""
    with db.autocommit() as cur:
        cur.execute("SELECT coalesce(sum(streams), 0) FROM stream_counts WHERE user_id = %s", (user_id,))
        return int(cur.fetchone()[0])


def _given_back_by_now() -> None:
    """Wait out the moment an ended stream's slot may wait to go back with others (slots.py)."""
    gevent.sleep(slots.GIVE_BACK_DELAY_S * 2)


def _slots(app):
    return app.extensions["streamapp"].hub.slots


def test_another_users_execution_is_404_and_takes_no_slot(app, db, auth, producer):
    owner, other = auth.user(), auth.user()
    exec_id = producer.create_execution("workflow", "private", owner.user.get_id())["exec_id"]
    response = app.test_client().get(_url(exec_id), headers=other.headers)
    assert response.status_code == 404
    assert _counted(db, other.user.get_id()) == 0 and _slots(app).held == {}


def test_an_admin_streams_anyones_execution_on_one_slot_given_back_at_close(app, db, auth, producer):
    owner, admin = auth.user(), auth.user(admin=True)
    exec_id = producer.create_execution("workflow", "watched", owner.user.get_id())["exec_id"]
    response = app.test_client().get(_url(exec_id), headers=admin.headers)
    assert response.status_code == 200
    assert _counted(db, admin.user.get_id()) == 1 and _slots(app).held == {admin.user.get_id(): 1}
    response.close()  # the body never ran: the client left, and its slot goes back (at once on this
    # main greenlet, as under a sync worker; with its moment's others under a gevent worker)
    _given_back_by_now()
    assert _counted(db, admin.user.get_id()) == 0 and _slots(app).held == {}


def test_an_execution_ended_at_the_cursor_is_204_and_takes_no_slot(app, db, account, producer):
    exec_id = producer.create_execution("workflow", "done", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [COMPLETE])
    response = app.test_client().get(_url(exec_id), headers={**account.headers, "Last-Event-ID": "1"})
    assert response.status_code == 204
    assert _counted(db, account.user.get_id()) == 0 and _slots(app).held == {}


def test_a_stream_that_ends_gives_its_slot_back_with_the_others_of_that_moment(app, db, account, producer):
    # Its terminal event sent, the stream is free on this worker at once and on every worker within
    # GIVE_BACK_DELAY_S, in one statement with the others ending then (slots.py).
    exec_id = producer.create_execution("workflow", "done", account.user.get_id())["exec_id"]
    producer.append_events(exec_id, [COMPLETE])
    # On a greenlet of the gevent loop, as a gevent worker serves it.
    response = gevent.spawn(app.test_client().get, _url(exec_id), headers=account.headers).get()
    assert response.status_code == 200 and b"event: complete" in response.get_data()
    assert _slots(app).open == 0  # this worker's own limit sees it at once
    _given_back_by_now()
    assert _counted(db, account.user.get_id()) == 0 and _slots(app).held == {}


def test_a_stream_ended_by_shutdown_gives_its_slot_back_before_its_last_byte(make_client, db, account, producer):
    # The worker may be gone before a batch is written: its streams' slots go back at once.
    client = make_client()
    exec_id = producer.create_execution("workflow", "running", account.user.get_id())["exec_id"]
    response = client.get(_url(exec_id), headers=account.headers)
    body = iter(response.response)
    assert next(body).startswith(b"retry:")  # the prelude; the stream is live from here
    assert _counted(db, account.user.get_id()) == 1
    client.application.extensions["streamapp"].hub.stop()
    rest = gevent.spawn(b"".join, body).get()  # the end on a greenlet of the loop, as in a gevent worker
    assert rest.startswith(b"retry:")  # the jittered retry of a shutdown (SPEC §5.4)
    assert _counted(db, account.user.get_id()) == 0


def test_past_the_limit_429_but_404_first(make_client, db, auth, producer):
    user, stranger = auth.user(), auth.user()
    client = make_client(max_streams_per_user=1)
    mine = producer.create_execution("workflow", "mine", user.user.get_id())["exec_id"]
    theirs = producer.create_execution("workflow", "theirs", stranger.user.get_id())["exec_id"]
    first = client.get(_url(mine), headers=user.headers)
    assert first.status_code == 200
    refused = client.get(_url(mine), headers=user.headers)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_streams"
    assert client.get(_url(theirs), headers=user.headers).status_code == 404
    assert _counted(db, user.user.get_id()) == 1
    first.close()
    assert client.get(_url(mine), headers=user.headers).status_code == 200


def test_a_hosts_hook_decides_before_the_slot_is_taken(public_host, db, producer):
    public = producer.create_execution("workflow", "public-job", "alice")["exec_id"]
    private = producer.create_execution("workflow", "private-job", "alice")["exec_id"]
    client, bob = public_host.test_client(), {"X-User": "bob"}
    assert client.get(_url(private, "/p"), headers=bob).status_code == 404
    assert _counted(db, "bob") == 0
    first = client.get(_url(public, "/p"), headers=bob)
    assert first.status_code == 200 and _counted(db, "bob") == 1
    assert client.get(_url(public, "/p"), headers=bob).status_code == 429
    first.close()
    _given_back_by_now()
    assert _counted(db, "bob") == 0 and _slots(public_host).held == {}


STATUS = {"type": "workflow_status", "data": {"status": "RUNNING"}}


def _follow(client, exec_id: str, headers: dict[str, str], prefix: str = "/api/v0") -> tuple[t.Any, list[bytes]]:
    """A stream read on a greenlet of the loop, as a gevent worker runs it; its response and chunks."""
    response = gevent.spawn(client.get, _url(exec_id, prefix), headers=headers).get()
    chunks: list[bytes] = []
    gevent.spawn(chunks.extend, response.response)
    return response, chunks


def test_a_reconnect_to_an_execution_the_worker_streams_needs_no_database_connection(
    make_client, account, producer, monkeypatch
):
    # The hub streams the execution (a follower), one of the user's streams just ended here (its
    # slot waits to go back), and every pooled connection is busy: the connect is admitted from
    # what the hub knows, takes over that slot and replays from the hub's recent frames (issue 10).
    monkeypatch.setattr(slots, "GIVE_BACK_DELAY_S", 5.0)  # the ended slot waits for the connect below
    client = make_client(pool_size=1)
    db = client.application.extensions["streamapp"].db
    db._slots_semaphore = gevent.lock.BoundedSemaphore(1)  # cooperative, as in a gevent worker
    db.pool_timeout_s = 2.0  # a connect that waits for the pool answers 503
    user_id = account.user.get_id()
    followed = producer.create_execution("workflow", "followed", user_id)["exec_id"]
    producer.append_events(followed, [STATUS, STATUS])
    done = producer.create_execution("workflow", "done", user_id)["exec_id"]
    producer.append_events(done, [COMPLETE])
    follower, seen = _follow(client, followed, account.headers)
    until(lambda: b"id: 2\n" in b"".join(seen), 5, "the follower's replay")
    gevent.sleep(0.05)  # past its replay: the hub has read the execution up to 2
    ended, _ = _follow(client, done, account.headers)
    until(lambda: _slots(client.application).open == 1, 5, "the finished stream to end")
    with db.connection():
        response = gevent.spawn(client.get, _url(followed), headers={**account.headers, "Last-Event-ID": "1"}).get()
        assert response.status_code == 200
        first = gevent.spawn(next, iter(response.response)).get()
    assert first.startswith(b"retry:") and b"id: 2\n" in first and b"id: 1\n" not in first
    assert _slots(client.application).open == 2
    for stream in (response, follower, ended):
        gevent.spawn(stream.close).join()
    # Give back now what waits: the delayed give-back, scheduled above, then finds nothing to write
    # when it fires, in whichever test runs by then.
    gevent.spawn(_slots(client.application)._flush_later).join()


def test_a_connect_the_hub_cannot_admit_asks_the_database(make_client, auth, producer):
    # Not the owner, or no slot of theirs waiting here: the database decides, as for any connect.
    owner, other = auth.user(), auth.user()
    client = make_client()
    followed = producer.create_execution("workflow", "followed", owner.user.get_id())["exec_id"]
    producer.append_events(followed, [STATUS])
    follower, seen = _follow(client, followed, owner.headers)
    until(lambda: b"id: 1\n" in b"".join(seen), 5, "the follower's replay")
    gevent.sleep(0.05)
    assert gevent.spawn(client.get, _url(followed), headers=other.headers).get().status_code == 404
    second = gevent.spawn(client.get, _url(followed), headers=owner.headers).get()
    assert second.status_code == 200 and _slots(client.application).held == {owner.user.get_id(): 2}
    for stream in (second, follower):
        gevent.spawn(stream.close).join()
    _given_back_by_now()


def test_a_hosts_hook_is_asked_even_for_an_execution_the_worker_streams(settings, producer, monkeypatch):
    # What the hub knows stands in for the database under the default rule only: a host's hook may
    # decide on anything, at any time, so it sees every connect.
    monkeypatch.setattr(slots, "GIVE_BACK_DELAY_S", 5.0)  # alice's ended slot waits for the connect below
    closed: set[str] = set()
    app = host_app()
    StreamApp(
        settings=settings, url_prefix="/p", authorize=lambda user, execution: execution["exec_id"] not in closed
    ).init_app(app)
    client, alice = app.test_client(), {"X-User": "alice"}
    followed = producer.create_execution("workflow", "followed", "alice")["exec_id"]
    producer.append_events(followed, [STATUS])
    done = producer.create_execution("workflow", "done", "alice")["exec_id"]
    producer.append_events(done, [COMPLETE])
    try:
        follower, seen = _follow(client, followed, alice, "/p")
        until(lambda: b"id: 1\n" in b"".join(seen), 5, "the follower's replay")
        gevent.sleep(0.05)
        _follow(client, done, alice, "/p")
        until(lambda: _slots(app).open == 1, 5, "the finished stream to end")
        closed.add(followed)
        refused = gevent.spawn(client.get, _url(followed, "/p"), headers=alice).get()
        assert refused.status_code == 404
        gevent.spawn(follower.close).join()
        gevent.spawn(_slots(app)._flush_later).join()
    finally:
        app.extensions["streamapp"].close()
