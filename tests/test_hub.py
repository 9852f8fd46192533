"""The hub's maintenance round: stream slots and revoked credentials, on a real PostgreSQL (issue 6).

The live behaviour over gunicorn is in tests/live/test_hub.py and tests/live/test_revocation.py;
here one hub, never started, runs ``maintain()`` by hand.
"""

from __future__ import annotations

import logging
import secrets
import typing as t

import pytest

from streamapp import slots
from streamapp.db import Database
from streamapp.hub import Hub

STALE_S = 30.0


@pytest.fixture
def make_hub() -> t.Iterator[t.Callable[..., Hub]]:
    hubs: list[tuple[Hub, Database]] = []

    def make(url: str, **kwargs: t.Any) -> Hub:
        db = Database(url, 2)
        hub = Hub(db, url, listen=False, **kwargs)
        hub.worker_id = "test-worker"  # what start() would make
        hubs.append((hub, db))
        return hub

    yield make
    for hub, db in hubs:
        hub.stop()
        db.close()


@pytest.fixture
def new_user_id() -> str:
    return "hub-test-" + secrets.token_hex(4)


def test_revocation_is_checked_when_the_slot_refresh_fails(empty_database, make_hub):
    """A database error in the slot refresh does not skip that round's revocation check."""
    checked: list[set[str]] = []

    def revoked(cur: t.Any, user_ids: set[str], prefixes: set[str]) -> tuple[set[str], set[str]]:
        cur.execute("SELECT 1")  # the check itself reaches the database
        checked.append(user_ids)
        return {"7"}, set()

    # No stream_slots table there: every slot query fails.
    hub = make_hub(empty_database, revoked_check=revoked)
    sub = hub.subscribe("e-1", user_id="7", token_prefix=None, text_mode=False)
    hub.hold_slot("7")  # so there is something to write back
    hub.maintain()
    assert checked == [{"7"}]
    assert sub.closing


def _take(hub: Hub, user_id: str, limit: int) -> bool:
    with hub.db.autocommit() as cur:
        return slots.take(cur, user_id, hub.worker_id, limit, STALE_S)


def _counted(hub: Hub, user_id: str) -> int:
    """How many streams of the user count toward their limit now."""
    with hub.db.autocommit() as cur:
        cur.execute(
            "SELECT coalesce(sum(streams), 0) FROM stream_counts"
            " WHERE user_id = %s AND seen_at > now() - make_interval(secs => %s)",
            (user_id, STALE_S),
        )
        return int(cur.fetchone()[0])


def test_maintain_writes_back_what_the_hub_holds(database, make_hub, new_user_id):
    hub = make_hub(database)
    for _ in range(3):
        assert _take(hub, new_user_id, 10)
        hub.hold_slot(new_user_id)
    # One stream ended and its give-back failed: only the hub knows.
    hub.release_slot(new_user_id)
    assert _counted(hub, new_user_id) == 3
    hub.maintain()
    assert _counted(hub, new_user_id) == 2


def test_a_failed_give_back_stops_counting_at_the_next_round(database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    hub.hold_slot(new_user_id)
    assert not _take(hub, new_user_id, 1)  # the limit holds while the stream is open
    hub.release_slot(new_user_id)  # ...and its give-back "failed"
    hub.maintain()
    assert _take(hub, new_user_id, 1)


def test_counts_of_a_worker_that_stopped_writing_them_go_stale(database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 1)
    with hub.db.autocommit() as cur:  # an hour without a maintenance round: the worker died
        cur.execute("UPDATE stream_counts SET seen_at = now() - interval '1 hour' WHERE user_id = %s", (new_user_id,))
    assert _take(hub, new_user_id, 1)


def test_a_failed_round_is_made_good_at_the_next(database, empty_database, make_hub, new_user_id):
    hub = make_hub(database)
    assert _take(hub, new_user_id, 10)
    hub.hold_slot(new_user_id)
    hub.maintain()
    hub.release_slot(new_user_id)
    real_db, hub.db = hub.db, Database(empty_database, 1)  # a round in which every count query fails
    try:
        hub.maintain()
    finally:
        hub.db.close()
        hub.db = real_db
    assert _counted(hub, new_user_id) == 1
    hub.maintain()
    assert _counted(hub, new_user_id) == 0


def test_rows_of_workers_long_dead_are_deleted(database, make_hub, new_user_id):
    hub = make_hub(database)
    dead = make_hub(database)
    dead.worker_id = "a-worker-that-died"
    assert _take(dead, new_user_id, 10)
    with hub.db.autocommit() as cur:
        cur.execute("UPDATE stream_counts SET seen_at = now() - interval '1 day' WHERE worker = %s", (dead.worker_id,))
    hub.hold_slot("someone")  # any round that writes
    hub.maintain()
    with hub.db.autocommit() as cur:
        cur.execute("SELECT count(*) FROM stream_counts WHERE worker = %s", (dead.worker_id,))
        assert cur.fetchone()[0] == 0


def test_the_per_user_sum_covers_every_worker(database, make_hub, new_user_id):
    one, two = make_hub(database), make_hub(database)
    two.worker_id = "another-worker"
    assert _take(one, new_user_id, 2) and _take(two, new_user_id, 2)
    assert not _take(one, new_user_id, 2) and not _take(two, new_user_id, 2)


def test_maintain_without_slots_or_streams_sends_no_query(empty_database, make_hub, caplog):
    hub = make_hub(empty_database)
    with caplog.at_level(logging.WARNING, logger="streamapp.hub"):
        hub.maintain()  # a query would fail there: no stream_counts table
    assert caplog.records == []
