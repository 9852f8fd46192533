"""The hub's maintenance round: stream slots and revoked credentials, on a real PostgreSQL (issue 6).

The live behaviour over gunicorn is in tests/live/test_hub.py and tests/live/test_revocation.py;
here one hub, never started, runs ``maintain()`` by hand.
"""

from __future__ import annotations

import typing as t

import pytest

from streamapp.db import Database
from streamapp.hub import Hub


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
    hub.maintain()
    assert checked == [{"7"}]
    assert sub.closing
