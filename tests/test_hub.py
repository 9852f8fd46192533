"""The hub's maintenance round and its stream slots, on a real PostgreSQL (issue 6).

The live behaviour over gunicorn is in tests/live/test_hub.py, tests/live/test_slots.py and
tests/live/test_revocation.py; here one hub, never started, runs ``maintain()`` by hand.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import typing as t

import gevent
import psycopg2.extensions
import pytest

from streamapp import slots
from streamapp import storage
from streamapp.db import Database
from streamapp.errors import TooManyStreams
from streamapp.hub import LISTENER_NAME
from streamapp.hub import Hub
from tests.conftest import until

STALE_S = 30.0  # slots.stale_after() of the default maintenance interval


@pytest.fixture
def make_hub() -> t.Iterator[t.Callable[..., Hub]]:
    hubs: list[tuple[Hub, Database]] = []

    def make(url: str, **kwargs: t.Any) -> Hub:
        db = Database(url, 2)
        hub = Hub(db, url, listen=False, **kwargs)
        hub.slots.worker_id = "test-worker"  # what start() would make
        hubs.append((hub, db))
        return hub

    yield make
    for hub, db in hubs:
        hub.stop()
        db.close()


@pytest.fixture
def new_user_id() -> str:
    return "hub-test-" + secrets.token_hex(4)


@contextlib.contextmanager
def _counts_fail(hub: Hub, empty_database: str) -> t.Iterator[None]:
    """Meanwhile every query on the hub's slots fails: its database answers but has no stream_counts."""
    real, hub.slots.db = hub.slots.db, Database(empty_database, 1)
    try:
        yield
    finally:
        hub.slots.db.close()
        hub.slots.db = real


def _take(hub: Hub, user_id: str, limit: int) -> bool:
    """Whether the hub's slots admit one more stream of the user (the stream view's step)."""
    with hub.db.autocommit() as cur:
        try:
            hub.slots.take(cur, user_id, limit)
        except TooManyStreams:
            return False
    return True


def _counted(hub: Hub, user_id: str) -> int:
    """How many streams of the user count toward their limit now."""
    with hub.db.autocommit() as cur:
        cur.execute(
            "SELECT coalesce(sum(streams), 0) FROM stream_counts"
            " WHERE user_id = %s AND seen_at > now() - make_interval(secs => %s)",
            (user_id, STALE_S),
        )
        return int(cur.fetchone()[0])


def test_revocation_is_checked_when_the_slot_refresh_fails(database, empty_database, make_hub, new_user_id):
    """A database error in the slot refresh does not skip that round's revocation check."""
    checked: list[set[str]] = []

    def revoked(cur: t.Any, user_ids: set[str], prefixes: set[str]) -> tuple[set[str], set[str]]:
        cur.execute("SELECT 1")  # the check itself reaches the database
        checked.append(user_ids)
        return {new_user_id}, set()

    hub = make_hub(database, revoked_check=revoked)
    sub = hub.subscribe("e-1", user_id=new_user_id, token_prefix=None, text_mode=False)
    assert _take(hub, new_user_id, 10)  # so there is something to write back
    with _counts_fail(hub, empty_database):
        hub.maintain()
    assert checked == [{new_user_id}]
    assert sub.closing


def test_a_slot_counts_on_the_worker_until_given_back(database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    assert (hub.slots.open, hub.slots.held, _counted(hub, new_user_id)) == (1, {new_user_id: 1}, 1)
    hub.slots.give_back(new_user_id, at_once=True)
    assert (hub.slots.open, hub.slots.held, _counted(hub, new_user_id)) == (0, {}, 0)


@pytest.fixture
def green_psycopg2() -> t.Iterator[None]:
    """psycopg2 yields to other greenlets while it waits, as in a gevent worker (gunicorn.conf.py)."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    yield
    psycopg2.extensions.set_wait_callback(None)


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """Each give-back statement's per-user counts, in order; the statements still run."""
    statements: list[dict[str, int]] = []
    real_give_back = slots.give_back

    def spy(cur: t.Any, worker: str, ended: t.Mapping[str, int]) -> None:
        statements.append(dict(ended))
        real_give_back(cur, worker, ended)

    monkeypatch.setattr(slots, "give_back", spy)
    return statements


def _ended(hub: Hub, user_id: str) -> None:
    """A stream of ``user_id`` ends on a greenlet of the gevent loop, as in a gevent worker."""
    gevent.spawn(hub.slots.give_back, user_id).get()


def test_streams_ending_together_are_given_back_together(database, make_hub, new_user_id, green_psycopg2, written):
    # 50 streams end at once, as on a worker's shutdown, each giving its slot back at once: a row
    # update each queued on that row's lock and held the pool from appends (issue 10).
    hub = make_hub(database)
    others = new_user_id + "-other"
    for user_id in [new_user_id] * 40 + [others] * 10:
        assert _take(hub, user_id, 100)
    ending = [gevent.spawn(hub.slots.give_back, u, at_once=True) for u in [new_user_id] * 40 + [others] * 10]
    gevent.joinall(ending, raise_error=True)
    assert len(written) == 2, written  # the first alone, then all that ended meanwhile
    assert written[1] == {new_user_id: 39, others: 10}
    assert (hub.slots.open, hub.slots.held) == (0, {})
    assert (_counted(hub, new_user_id), _counted(hub, others)) == (0, 0)


def test_a_refused_stream_holds_nothing(database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    assert not _take(hub, new_user_id, 1)
    assert (hub.slots.open, hub.slots.held, _counted(hub, new_user_id)) == (1, {new_user_id: 1}, 1)


def test_maintain_writes_back_what_the_hub_holds(database, empty_database, make_hub, new_user_id):
    hub = make_hub(database)
    for _ in range(3):
        assert _take(hub, new_user_id, 10)
    with _counts_fail(hub, empty_database):  # one stream ended and its give-back failed: only the hub knows
        hub.slots.give_back(new_user_id, at_once=True)
    assert _counted(hub, new_user_id) == 3
    hub.maintain()
    assert _counted(hub, new_user_id) == 2


def test_a_failed_give_back_stops_counting_at_the_next_round(database, empty_database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    assert not _take(hub, new_user_id, 1)  # the limit holds while the stream is open
    with _counts_fail(hub, empty_database):
        hub.slots.give_back(new_user_id, at_once=True)
    assert not _take(hub, new_user_id, 1)  # the row still counts...
    hub.maintain()
    assert _take(hub, new_user_id, 1)  # ...until the next round


def test_counts_of_a_worker_that_stopped_writing_them_go_stale(database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    with hub.db.autocommit() as cur:  # an hour without a maintenance round: the worker died
        cur.execute("UPDATE stream_counts SET seen_at = now() - interval '1 hour' WHERE user_id = %s", (new_user_id,))
    assert _take(hub, new_user_id, 1)


def test_a_failed_round_is_made_good_at_the_next(database, empty_database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 10)
    hub.maintain()
    with _counts_fail(hub, empty_database):
        hub.slots.give_back(new_user_id, at_once=True)
        hub.maintain()  # a round in which every count query fails
    assert _counted(hub, new_user_id) == 1
    hub.maintain()
    assert _counted(hub, new_user_id) == 0


def test_rows_of_workers_long_dead_are_deleted(database, make_hub, new_user_id):
    hub = make_hub(database)
    dead = make_hub(database)
    dead.slots.worker_id = "a-worker-that-died"
    assert _take(dead, new_user_id, 10)
    with hub.db.autocommit() as cur:
        cur.execute("UPDATE stream_counts SET seen_at = now() - interval '1 day' WHERE worker = %s", (dead.worker_id,))
    assert _take(hub, new_user_id + "-someone", 10)  # any round that writes
    hub.maintain()
    with hub.db.autocommit() as cur:
        cur.execute("SELECT count(*) FROM stream_counts WHERE worker = %s", (dead.worker_id,))
        assert cur.fetchone()[0] == 0


def test_the_per_user_sum_covers_every_worker(database, make_hub, new_user_id):
    one, two = make_hub(database), make_hub(database)
    two.slots.worker_id = "another-worker"
    assert _take(one, new_user_id, 2) and _take(two, new_user_id, 2)
    assert not _take(one, new_user_id, 2) and not _take(two, new_user_id, 2)


def test_maintain_without_slots_or_streams_sends_no_query(empty_database, make_hub, caplog):
    hub = make_hub(empty_database)
    with caplog.at_level(logging.WARNING, logger="streamapp.hub"):
        hub.maintain()  # a query would fail there: no stream_counts table
    assert caplog.records == []


def test_slots_of_clients_that_hung_up_go_back_together_a_moment_later(
    database, make_hub, new_user_id, green_psycopg2, written
):
    # A client that hung up gets its slot back within GIVE_BACK_DELAY_S, with every other one of
    # that moment in one statement: not a round trip each, that the next connect waits behind.
    hub = make_hub(database)
    for _ in range(20):
        assert _take(hub, new_user_id, 100)
    for _ in range(20):
        _ended(hub, new_user_id)
    assert hub.slots.open == 0  # this worker's own limit sees it at once
    assert (written, _counted(hub, new_user_id)) == ([], 20)
    gevent.sleep(slots.GIVE_BACK_DELAY_S * 2)
    assert written == [{new_user_id: 20}]
    assert (hub.slots.held, _counted(hub, new_user_id)) == ({}, 0)


def test_a_slot_freed_on_shutdown_goes_back_at_once_with_those_waiting(database, make_hub, new_user_id, green_psycopg2):
    hub = make_hub(database)
    for _ in range(3):
        assert _take(hub, new_user_id, 100)
    _ended(hub, new_user_id)
    _ended(hub, new_user_id)
    hub.slots.give_back(new_user_id, at_once=True)  # a worker shutting down: written before it returns, the others too
    assert (hub.slots.held, _counted(hub, new_user_id)) == ({}, 0)
    gevent.sleep(slots.GIVE_BACK_DELAY_S * 2)  # the later flush finds nothing left to write
    assert (hub.slots.held, _counted(hub, new_user_id)) == ({}, 0)


def test_a_stream_that_ends_outside_the_loops_greenlets_gives_back_at_once(database, make_hub, new_user_id, written):
    # A sync or threaded worker runs requests on a thread's main greenlet: nothing may run the
    # gevent loop, and a later batch with it, until that worker's next stream.
    hub = make_hub(database)
    assert _take(hub, new_user_id, 100)
    hub.slots.give_back(new_user_id)
    assert (written, hub.slots.held, _counted(hub, new_user_id)) == ([{new_user_id: 1}], {}, 0)


def _row_version(hub: Hub, user_id: str) -> str:
    """The version of the user's count row on the hub's worker: it changes with every write of it."""
    with hub.db.autocommit() as cur:
        cur.execute(
            "SELECT xmin::text FROM stream_counts WHERE user_id = %s AND worker = %s", (user_id, hub.slots.worker_id)
        )
        return str(cur.fetchone()[0])


def _open(hub: Hub, reader: slots.Reader, exec_id: str, cursor: int = 0) -> tuple[t.Any, bool]:
    """The stream view's lookup at a limit of 1, on a greenlet of the gevent loop as in a gevent worker."""

    def lookup() -> tuple[t.Any, bool]:
        with hub.db.autocommit() as cur:
            return hub.slots.take_on_open(cur, "workflow", exec_id, cursor, reader, 1)

    return t.cast(tuple[t.Any, bool], gevent.spawn(lookup).get())


def test_a_new_stream_of_the_user_on_this_worker_takes_over_a_slot_waiting_to_go_back(
    database, make_hub, account, workflow, green_psycopg2, written
):
    # At the limit, a client that hangs up and opens another stream at once is not refused for the
    # slot still waiting to go back: the new stream holds it, and the database, which counts it
    # still, is not written at all (issue 10: a read is the cheaper round trip).
    hub = make_hub(database)
    user_id = account.user.get_id()
    reader = slots.Reader(user_id, any_owner=False, default_rule=True)
    assert _open(hub, reader, workflow)[1]
    _ended(hub, user_id)
    version = _row_version(hub, user_id)
    assert _open(hub, reader, workflow)[1]
    assert (_row_version(hub, user_id), hub.slots.open, hub.slots.held) == (version, 1, {user_id: 1})
    gevent.sleep(slots.GIVE_BACK_DELAY_S * 2)
    assert (written, _counted(hub, user_id), hub.slots.held) == ([], 1, {user_id: 1})  # nothing to give back
    assert not _open(hub, reader, workflow)[1]  # and the limit still holds


@pytest.mark.parametrize("case", ["unknown", "not_visible", "ended_at_cursor"])
def test_a_waiting_slot_a_connect_could_not_use_still_goes_back(
    database, make_hub, account, workflow, producer, green_psycopg2, case
):
    hub = make_hub(database)
    user_id = account.user.get_id()
    reader = slots.Reader(user_id, any_owner=False, default_rule=True)
    assert _open(hub, reader, workflow)[1]
    _ended(hub, user_id)
    exec_id, cursor = workflow, 0
    if case == "unknown":
        exec_id = "no-such-execution"
    elif case == "not_visible":
        exec_id = producer.create_execution("workflow", "theirs", user_id + "-other")["exec_id"]
    else:
        producer.append_events(workflow, [{"type": "complete", "data": {"status": "SUCCESS"}}])
        cursor = 1
    execution, held = _open(hub, reader, exec_id, cursor)
    assert not held and (execution is None) == (case == "unknown")
    assert (hub.slots.open, _counted(hub, user_id)) == (0, 1)
    gevent.sleep(slots.GIVE_BACK_DELAY_S * 2)
    assert (hub.slots.held, _counted(hub, user_id)) == ({}, 0)


def test_a_host_rule_gives_a_waiting_slot_back_in_its_connects_round_trip(database, make_hub, account, workflow):
    # A host's authorize hook decides after the lookup, so the connect cannot know the stream will
    # run: it gives the waiting slot back, then takes one as any stream does.
    hub = make_hub(database)
    user_id = account.user.get_id()
    assert _open(hub, slots.Reader(user_id, any_owner=False, default_rule=True), workflow)[1]
    _ended(hub, user_id)
    execution, held = _open(hub, slots.Reader(user_id, any_owner=False, default_rule=False), workflow)
    assert execution is not None and not held
    assert (hub.slots.held, _counted(hub, user_id)) == ({}, 0)
    assert _take(hub, user_id, 1)


def _listener_backend(db: Database) -> tuple[int, str] | None:
    """The listener's backend pid and its last statement, as PostgreSQL shows them."""
    with db.autocommit() as cur:
        cur.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (LISTENER_NAME,),
        )
        return cur.fetchone()


def test_an_idle_listener_probes_its_connection_and_still_hears_wake_ups(empty_database, green_psycopg2):
    # The listener sleeps on one watcher for its connection's life and probes it when idle: every
    # probe_s, not back to back, and a wake-up after the probes still arrives on that connection.
    db = Database(empty_database, 2)
    hub = Hub(db, empty_database, listen=True, probe_s=0.05)
    woken: list[tuple[str, int]] = []
    hub.wake = lambda exec_id, last_id: woken.append((exec_id, last_id))  # type: ignore[method-assign]
    hub.start()
    try:
        until(lambda: hub.listener_healthy, 10, "a listening listener")
        first = _listener_backend(db)
        assert first is not None
        cpu = time.process_time()
        gevent.sleep(0.5)  # about ten probes, a few milliseconds of work; not a probe after another
        assert time.process_time() - cpu < 0.15
        probed = _listener_backend(db)
        assert probed is not None and probed[0] == first[0] and probed[1] == "SELECT 1"
        with db.autocommit() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (storage.CHANNEL, storage.wake_payload("wf_probe", 7)))
        until(lambda: bool(woken), 10, "the wake-up")
        assert woken == [("wf_probe", 7)]
        assert hub.listener_healthy and _listener_backend(db) == (first[0], "SELECT 1")
    finally:
        hub.stop()
        db.close()
