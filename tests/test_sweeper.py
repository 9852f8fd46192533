"""Abandoned executions (SPEC §2): ``sweeper.sweep`` against a real PostgreSQL.

Idleness is made by moving an execution's timestamps back in the database;
tests/live/test_sweeper.py shows the same over gunicorn workers racing.
"""

from __future__ import annotations

import json

from streamapp import sweeper

RUNNING = {"type": "agent_status", "data": {"status": "RUNNING"}}
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}
HOUR_S = 3600.0


def _age(db, exec_id: str, seconds: float) -> None:
    with db.transaction() as cur:
        cur.execute(
            "UPDATE executions SET created_at = created_at - make_interval(secs => %(s)s),"
            " updated_at = updated_at - make_interval(secs => %(s)s) WHERE exec_id = %(id)s",
            {"s": seconds, "id": exec_id},
        )


def _events(db, exec_id: str) -> list[tuple[int, str, dict]]:
    with db.transaction() as cur:
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [(i, typ, json.loads(env)["data"]) for i, typ, env in cur.fetchall()]


def _new(producer, account, *events) -> str:
    exec_id = producer.create_execution("agent", "a", account.user.get_id())["exec_id"]
    if events:
        producer.append_events(exec_id, list(events))
    return exec_id


def test_an_idle_execution_ends_timed_out_once(db, producer, account):
    exec_id = _new(producer, account, RUNNING)
    _age(db, exec_id, 2 * HOUR_S)
    assert exec_id in sweeper.sweep(db, HOUR_S)
    [_, (event_id, type_name, data)] = _events(db, exec_id)
    assert (event_id, type_name) == (2, "error")
    assert data["status"] == "TIMED_OUT" and data["error"]["code"] == "timed_out"
    assert "3600" in data["error"]["message"]
    assert exec_id not in sweeper.sweep(db, HOUR_S)
    assert len(_events(db, exec_id)) == 2


def test_one_without_events_counts_from_its_creation(db, producer, account):
    young, old = _new(producer, account), _new(producer, account)
    _age(db, old, 2 * HOUR_S)
    ended = sweeper.sweep(db, HOUR_S)
    assert old in ended and young not in ended
    assert [typ for _, typ, _ in _events(db, old)] == ["error"] and _events(db, young) == []


def test_a_recent_event_keeps_an_old_execution_open(db, producer, account):
    exec_id = _new(producer, account)
    _age(db, exec_id, 2 * HOUR_S)
    producer.append_events(exec_id, [RUNNING])  # its last event is now
    assert exec_id not in sweeper.sweep(db, HOUR_S)
    assert [typ for _, typ, _ in _events(db, exec_id)] == ["agent_status"]


def test_an_ended_execution_is_left_alone(db, producer, account):
    exec_id = _new(producer, account, COMPLETE)
    _age(db, exec_id, 2 * HOUR_S)
    assert exec_id not in sweeper.sweep(db, HOUR_S)


def test_batches_end_every_idle_execution(db, producer, account):
    exec_ids = [_new(producer, account) for _ in range(7)]
    for exec_id in exec_ids:
        _age(db, exec_id, 2 * HOUR_S)
    assert set(exec_ids) <= set(sweeper.sweep(db, HOUR_S, batch=3))
    assert all([typ for _, typ, _ in _events(db, e)] == ["error"] for e in exec_ids)


def test_a_row_held_by_an_append_is_skipped_not_waited_for(db, producer, account):
    exec_id = _new(producer, account)
    _age(db, exec_id, 2 * HOUR_S)
    with db.transaction() as cur:
        cur.execute("SELECT 1 FROM executions WHERE exec_id = %s FOR UPDATE", (exec_id,))
        assert exec_id not in sweeper.sweep(db, HOUR_S)
    assert exec_id in sweeper.sweep(db, HOUR_S)


def test_a_sweep_steps_aside_while_another_worker_sweeps(db, producer, account):
    exec_id = _new(producer, account)
    _age(db, exec_id, 2 * HOUR_S)
    with db.transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (sweeper._LOCK_KEY,))
        assert sweeper.sweep(db, HOUR_S) == []
    assert exec_id in sweeper.sweep(db, HOUR_S)


def test_the_sweep_interval_follows_the_timeout():
    assert sweeper.interval_s(2) == 0.5
    assert sweeper.interval_s(0.1) == 0.25
    assert sweeper.interval_s(HOUR_S) == 5.0
