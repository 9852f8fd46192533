"""Appends in transactions of streamapp's own: stored once committed, whatever the wake-up does (SPEC §3)."""

from __future__ import annotations

import logging

import pytest

from streamapp import storage
from streamapp.producer import Producer

PROGRESS = {"type": "progress", "data": {"n": 1}}


def _last_event_id(db, exec_id: str) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT last_event_id FROM executions WHERE exec_id = %s", (exec_id,))
        return cur.fetchone()[0]


@pytest.mark.parametrize("warm", [False, True], ids=["locking path", "one-round-trip path"])
def test_when_only_the_wake_up_fails_the_append_is_stored_and_said_once(db, workflow, monkeypatch, caplog, warm):
    producer = Producer(db)
    if warm:
        producer.append_events(workflow, [PROGRESS])
    before = _last_event_id(db, workflow)
    # PostgreSQL refuses a NOTIFY on an empty channel name: the wake-up, after the COMMIT, fails.
    monkeypatch.setattr(storage, "CHANNEL", "")
    with caplog.at_level(logging.WARNING, logger="streamapp.own_transaction"):
        result = producer.append_events(workflow, [PROGRESS, PROGRESS])
    assert (result.first_id, result.last_id) == (before + 1, before + 2)
    assert _last_event_id(db, workflow) == before + 2
    assert [r.getMessage() for r in caplog.records].count(
        "NOTIFY after an append failed; streams catch up by the safety check"
    ) == 1
    monkeypatch.undo()
    # The connection went back to the pool clean: the next append takes the next ids.
    assert producer.append_events(workflow, [PROGRESS]).first_id == before + 3
