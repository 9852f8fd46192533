"""Appends to executions a producer already knows: one round trip, same rows, same rules (issue 10).

A producer remembers what never changes about an execution it appended to
(``KnownExecutions``); its next appends go through ``appends.append_known``.
Two producers stand for two workers (or hosts) with their own memories.
"""

from __future__ import annotations

import json
import threading
import typing as t

import pytest

from streamapp.errors import Conflict
from streamapp.errors import NotFound
from streamapp.producer import Producer

STATUS = {"type": "workflow_status", "data": {"status": "RUNNING"}}
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _stored(db: t.Any, exec_id: str) -> list[tuple[int, str, dict[str, t.Any]]]:
    with db.transaction() as cur:
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [(row[0], row[1], json.loads(row[2])) for row in cur.fetchall()]


def _execution(db: t.Any, exec_id: str) -> tuple[int, str, int | None]:
    with db.transaction() as cur:
        cur.execute("SELECT last_event_id, status, terminal_event_id FROM executions WHERE exec_id = %s", (exec_id,))
        return t.cast(tuple[int, str, t.Any], cur.fetchone())


@pytest.fixture
def warm(db: t.Any, workflow: str) -> Producer:
    """A producer that has appended to ``workflow`` once, so it knows it."""
    producer = Producer(db)
    producer.append_events(workflow, [{"type": "workflow_start", "data": {"workflow_id": "w"}}])
    assert producer._known.get(workflow) is not None
    return producer


def test_the_known_path_stores_the_same_envelopes_and_state(warm, db, workflow):
    result = warm.append_events(workflow, [STATUS, {"type": "progress", "data": {"n": 1}}])
    assert (result.first_id, result.last_id, result.status) == (2, 3, "RUNNING")
    rows = _stored(db, workflow)
    assert [(i, kind) for i, kind, _ in rows] == [(1, "workflow_start"), (2, "workflow_status"), (3, "progress")]
    first, second = rows[0][2], rows[1][2]
    # Same shape and key order as an envelope written by the locking path.
    assert list(second) == list(first) == ["id", "type", "ts", "exec_id", "kind", "data"]
    assert second["id"] == 2 and second["data"] == {"status": "RUNNING"} and second["exec_id"] == workflow
    assert _execution(db, workflow) == (3, "RUNNING", None)


def test_a_terminal_event_ends_it_and_the_next_append_is_a_conflict(warm, db, workflow):
    result = warm.append_events(workflow, [STATUS, COMPLETE])
    assert (result.last_id, result.status) == (3, "SUCCESS")
    assert _execution(db, workflow) == (3, "SUCCESS", 3)
    with pytest.raises(Conflict):
        warm.append_events(workflow, [STATUS])
    assert len(_stored(db, workflow)) == 3


def test_an_execution_another_worker_ended_is_a_conflict_and_nothing_is_stored(warm, db, workflow):
    Producer(db).append_events(workflow, [COMPLETE])  # another worker, with a memory of its own
    with pytest.raises(Conflict):
        warm.append_events(workflow, [STATUS])
    assert [kind for _, kind, _ in _stored(db, workflow)] == ["workflow_start", "complete"]


def test_the_kind_is_still_checked(warm, workflow):
    with pytest.raises(NotFound):
        warm.append_events(workflow, [STATUS], kind="agent")


def test_a_caller_that_refuses_the_execution_stores_nothing(warm, workflow, db):
    with pytest.raises(NotFound), warm.appending(workflow, [STATUS]) as pending:
        assert pending.execution["exec_id"] == workflow
        raise NotFound()  # what the HTTP layer does for a user who may not write to it
    assert len(_stored(db, workflow)) == 1


def test_a_refused_locked_execution_is_rolled_back_and_unlocked(db, workflow):
    cold = Producer(db)
    with pytest.raises(NotFound), cold.appending(workflow, [STATUS]) as pending:
        assert pending.execution["last_event_id"] == 0  # the locked row, read for this append
        raise NotFound()
    # The lock went with the rollback: another producer appends at once, with the next id.
    assert Producer(db).append_events(workflow, [STATUS]).first_id == 1


def test_ids_stay_gap_free_with_two_warm_workers_racing(db, workflow):
    workers = [Producer(db), Producer(db)]
    for worker in workers:
        worker.append_events(workflow, [{"type": "progress", "data": {"n": -1}}])
    errors: list[BaseException] = []

    def produce(worker: Producer, who: int) -> None:
        try:
            for n in range(40):
                worker.append_events(workflow, [{"type": "progress", "data": {"who": who, "n": n}}] * 2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(w, i)) for i, w in enumerate(workers * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = _stored(db, workflow)
    assert [i for i, _, _ in rows] == list(range(1, 2 + 4 * 40 * 2 + 1))
    assert all(envelope["id"] == i for i, _, envelope in rows)
    assert _execution(db, workflow)[0] == len(rows)


def test_a_structured_delta_batch_takes_the_locking_path_and_its_sequence_is_checked(db, producer, account):
    agent = producer.create_execution("agent", "a", account.user.get_id(), output_schema={"type": "object"})["exec_id"]
    worker = Producer(db)
    delta = {"type": "structured_delta", "data": {"content": {"a": 1}, "sequence": 1}}
    worker.append_events(agent, [delta])
    worker.append_events(agent, [{**delta, "data": {"content": {"a": 2}, "sequence": 2}}])
    with pytest.raises(Exception, match="sequence"):
        worker.append_events(agent, [{**delta, "data": {"content": {"a": 3}, "sequence": 2}}])


def test_a_warm_producer_hands_over_what_it_knows_not_a_locked_row(warm, workflow):
    with warm.appending(workflow, [STATUS]) as pending:
        seen = pending.execution
        pending.commit()
    # The known path hands over the remembered execution, whose changing fields are blank:
    # no row was read and locked for this append.
    assert seen["owner_id"] and seen["last_event_id"] is None and seen["status"] is None
    with Producer(warm.db).appending(workflow, [STATUS]) as pending:
        assert pending.execution["last_event_id"] == 2
        pending.commit()
