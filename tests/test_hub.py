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
    hub.hold_slot("a-slot")  # so there is something to refresh
    hub.maintain()
    assert checked == [{"7"}]
    assert sub.closing


def _take(hub: Hub, user_id: str, limit: int) -> str | None:
    with hub.db.autocommit() as cur:
        return slots.take(cur, user_id, hub.worker_id, limit, STALE_S)


def _age_slots(hub: Hub, user_id: str) -> None:
    """Make the user's slots look unrefreshed for an hour."""
    with hub.db.autocommit() as cur:
        cur.execute("UPDATE stream_slots SET seen_at = now() - interval '1 hour' WHERE user_id = %s", (user_id,))


def _slots(hub: Hub, user_id: str) -> dict[str, bool]:
    """The user's slot rows: id -> whether it still counts."""
    with hub.db.autocommit() as cur:
        cur.execute(
            "SELECT id, seen_at > now() - make_interval(secs => %s) FROM stream_slots WHERE user_id = %s",
            (STALE_S, user_id),
        )
        return dict(cur.fetchall())


def test_maintain_refreshes_only_the_slots_the_hub_holds(database, make_hub, new_user_id):
    hub = make_hub(database)
    held, leaked, dropped = (_take(hub, new_user_id, 10) for _ in range(3))
    assert held and leaked and dropped
    for slot in (held, leaked, dropped):
        hub.hold_slot(slot)
    # A stream ended and its give-back failed: the hub no longer holds the slot.
    hub.release_slot(leaked)
    # Another ended and gave its slot back.
    hub.release_slot(dropped)
    with hub.db.autocommit() as cur:
        slots.give_back(cur, dropped)
    _age_slots(hub, new_user_id)
    hub.maintain()
    assert _slots(hub, new_user_id) == {held: True}  # the leaked slot was given back on retry


def test_a_leaked_slot_stops_counting(database, make_hub, new_user_id):
    hub = make_hub(database)
    leaked = _take(hub, new_user_id, 1)
    assert leaked is not None
    hub.hold_slot(leaked)
    assert _take(hub, new_user_id, 1) is None  # the limit holds while the stream is open
    hub.release_slot(leaked)  # ...and its give-back "failed"
    hub.maintain()
    assert _take(hub, new_user_id, 1) is not None


def test_a_failed_retry_is_retried_at_the_next_round(database, empty_database, make_hub, new_user_id):
    hub = make_hub(database)
    leaked = _take(hub, new_user_id, 10)
    assert leaked is not None
    hub.hold_slot(leaked)
    hub.release_slot(leaked)
    real_db, hub.db = hub.db, Database(empty_database, 1)  # a round in which every slot query fails
    try:
        hub.maintain()
    finally:
        hub.db.close()
        hub.db = real_db
    assert leaked in _slots(hub, new_user_id)
    hub.maintain()
    assert _slots(hub, new_user_id) == {}


def test_maintain_without_slots_or_streams_sends_no_query(empty_database, make_hub, caplog):
    hub = make_hub(empty_database)
    with caplog.at_level(logging.WARNING, logger="streamapp.hub"):
        hub.maintain()  # a query would fail there: no stream_slots table
    assert caplog.records == []
