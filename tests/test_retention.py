"""Retention (SPEC §9, §5.5): ``events prune`` and ``retention.prune`` over a real PostgreSQL.

Executions are aged by moving their timestamps back in the database, the one
thing a test cannot wait a week for; everything else runs as in production.
"""

from __future__ import annotations

import threading

import pytest

from streamapp import retention

WEEK_S = 7 * 86400
RUNNING = {"type": "workflow_status", "data": {"status": "RUNNING"}}
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def _execution(producer, account, *events, n: int = 0) -> str:
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    batch = [RUNNING] * n + list(events)
    if batch:
        producer.append_events(exec_id, batch)
    return exec_id


def _age(db, *exec_ids: str, days: int = 8) -> None:
    """As if these executions were created, and had their last event, ``days`` ago."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE executions SET created_at = created_at - make_interval(days => %(days)s),"
            " updated_at = updated_at - make_interval(days => %(days)s) WHERE exec_id = ANY(%(ids)s)",
            {"days": days, "ids": list(exec_ids)},
        )


def _ids(db, exec_id: str) -> list[int]:
    with db.transaction() as cur:
        cur.execute("SELECT id FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [row[0] for row in cur.fetchall()]


# -- the age option -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("7d", WEEK_S), ("30s", 30), ("5m", 300), ("12h", 43200), ("1s", 1), (" 2d ", 172800), ("36500d", 36500 * 86400)],
)
def test_ages(text, seconds):
    assert retention.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "1.5h", "0s", "7w", "1e3s", "7 d", "7D", "36501d", "١d"])
def test_bad_ages(text):
    with pytest.raises(ValueError):
        retention.parse_age(text)


@pytest.mark.parametrize("args", [["--older-than", "7"], ["--older-than", "0s"], ["--older-than", "week"], []])
def test_a_bad_or_missing_age_is_a_usage_error(runner, args):
    result = runner.invoke(args=["events", "prune", *args])
    assert result.exit_code == 2, result.output
    assert "older-than" in result.output


# -- what is pruned -------------------------------------------------------------------------------


def test_only_events_of_executions_ended_before_the_cutoff_go(db, producer, account, client):
    ended_old = _execution(producer, account, COMPLETE, n=3)
    ended_new = _execution(producer, account, COMPLETE, n=2)
    running_old = _execution(producer, account, n=4)
    empty_old = _execution(producer, account)
    _age(db, ended_old, running_old, empty_old)
    _age(db, ended_new, days=6)

    assert retention.prune(db, WEEK_S) == retention.Pruned(executions=1, events=4)
    assert _ids(db, ended_old) == []
    assert _ids(db, ended_new) == [1, 2, 3]
    assert _ids(db, running_old) == [1, 2, 3, 4]
    # The row stays: status, last_event_id, the document.
    doc = client.get(f"/api/v0/executions/workflows/{ended_old}", headers=account.headers).get_json()
    assert (doc["status"], doc["last_event_id"]) == ("SUCCESS", 4)
    # Nothing is left to do; a second run finds nothing.
    assert retention.prune(db, WEEK_S) == retention.Pruned()


def test_small_batches_remove_everything_and_count_it_once(db, producer, account):
    exec_ids = [_execution(producer, account, COMPLETE, n=n) for n in (0, 9, 24)]
    _age(db, *exec_ids)
    assert retention.prune(db, WEEK_S, batch_size=10) == retention.Pruned(executions=3, events=1 + 10 + 25)
    assert all(_ids(db, e) == [] for e in exec_ids)


def test_the_cli_prints_what_it_removed(runner, db, producer, account):
    exec_ids = [_execution(producer, account, COMPLETE, n=2) for _ in range(2)]
    _age(db, *exec_ids)
    result = runner.invoke(args=["events", "prune", "--older-than", "7d", "--batch-size", "2"])
    assert (result.exit_code, result.output) == (0, "removed 6 events of 2 ended executions\n")
    again = runner.invoke(args=["events", "prune", "--older-than", "7d"])
    assert (again.exit_code, again.output) == (0, "removed 0 events of 0 ended executions\n")


def test_an_exclusive_prune_steps_aside_while_another_holds_the_lock(db, producer, account):
    exec_id = _execution(producer, account, COMPLETE)
    _age(db, exec_id)
    with db.connection() as other:
        assert retention._try_lock(other)
        try:
            assert retention.prune_exclusively(db, WEEK_S) is None
            assert _ids(db, exec_id) == [1]
        finally:
            retention._unlock(other)
    assert retention.prune_exclusively(db, WEEK_S) == retention.Pruned(executions=1, events=1)


def test_appends_to_other_executions_all_succeed_while_prune_runs(db, producer, account):
    """Prune in one-event transactions beside a steady appender: every append lands, gap-free."""
    ended = [_execution(producer, account, COMPLETE, n=19) for _ in range(15)]
    _age(db, *ended)
    running = _execution(producer, account)
    _age(db, running)  # old, but not ended: its events are never candidates
    outcome: dict[str, object] = {}

    def run_prune() -> None:
        try:
            outcome["pruned"] = retention.prune(db, WEEK_S, batch_size=1)
        except BaseException as exc:  # handed to the test thread, which fails with it
            outcome["error"] = exc

    pruner = threading.Thread(target=run_prune)
    pruner.start()
    appended = []
    while pruner.is_alive() or len(appended) < 20:
        appended.append(producer.append_events(running, [RUNNING]).last_id)
    pruner.join()
    assert "error" not in outcome, outcome
    assert outcome["pruned"] == retention.Pruned(executions=15, events=15 * 20)
    assert appended == list(range(1, len(appended) + 1))
    assert _ids(db, running) == appended
    assert all(_ids(db, e) == [] for e in ended)
