"""The hub's fan-out paths of issue 10: streams whose terminal event the hub wrote end when the worker
is idle (``fanout.Endings``), all of them, in batches, and within a bound even on a worker that is never
idle; a worker's own appends are framed in memory as the read path frames them (``Topics.appended``)."""

from __future__ import annotations

import time

import gevent
import gevent.lock
import pytest
from prometheus_client import REGISTRY

from streamapp import fanout
from streamapp import storage
from streamapp.db import Database
from streamapp.fanout import Endings
from streamapp.producer import Producer
from streamapp.subscriber import Subscriber
from tests.conftest import until


def _ended(n: int) -> list[Subscriber]:
    subs = [Subscriber("e", limit=10, poll_ms=250) for _ in range(n)]
    for sub in subs:
        sub.ended = True  # as try_write leaves a stream it wrote the terminal event to
    return subs


def test_every_ended_stream_is_woken_in_batches():
    endings, subs = Endings(), _ended(Endings.BATCH * 2 + 5)
    seen = []  # by each stream as it wakes: how many streams were woken by then

    def stream(sub: Subscriber) -> None:
        sub.wakeup.wait()
        seen.append(sum(s.wakeup.is_set() for s in subs))

    greenlets = [gevent.spawn(stream, sub) for sub in subs]
    for sub in subs:
        endings.add(sub)
    assert not any(sub.wakeup.is_set() for sub in subs)  # not before the worker turns idle
    gevent.joinall(greenlets, timeout=5)
    assert len(seen) == len(subs) and not len(endings)
    assert min(seen) == Endings.BATCH  # the first batch runs before the next is woken


def test_a_worker_that_is_never_idle_still_ends_them_within_the_bound():
    busy = True

    def spin() -> None:
        while busy:
            gevent.sleep(0)  # always something to run: the loop never idles

    spinner = gevent.spawn(spin)
    endings, subs = Endings(), _ended(3)
    started = time.monotonic()
    try:
        for sub in subs:
            endings.add(sub)
        assert subs[-1].wakeup.wait(timeout=5)
    finally:
        busy = False
        spinner.join()
    assert Endings.IDLE_WAIT_S * 0.9 <= time.monotonic() - started < Endings.IDLE_WAIT_S + 1


def test_a_hang_up_after_the_terminal_event_leaves_the_stream_to_its_ending():
    (sub,) = _ended(1)
    sub.close("client_gone")
    assert not sub.closing and not sub.wakeup.is_set() and sub.reason == ""


def test_frames_made_from_a_producers_appends_are_the_bytes_postgresql_reads(db, workflow):
    """``Topics.appended`` sends frames made in memory; a stream reading the table must get the same bytes."""
    calls: list[tuple[str, int, list[tuple[str, str]]]] = []
    producer = Producer(db, appended=lambda exec_id, before, tails: calls.append((exec_id, before, list(tails))))
    producer.append_events(workflow, [{"type": "workflow_status", "data": {"status": "RUNNING"}}])  # learns it
    text = 'quote " backslash \\ tab \t newline \n line sep \u2028 control \u0001 é 漢 🙂'
    odd = {"text": text, "n": [1.5, None, True]}
    producer.append_events(
        workflow,
        [
            {"type": "tool_call", "data": {"tool_call_id": "c1", "tool_name": "sql", "status": "done", "output": odd}},
            {"type": "warning", "data": {"code": "odd", "message": odd["text"]}},
            {"type": "complete", "data": {"status": "SUCCESS"}},
        ],
    )
    assert calls, "the producer reported no append"
    exec_id, before, tails = calls[-1]
    assert exec_id == workflow and len(tails) == 3
    with db.autocommit() as cur:
        read, _ = storage.frames_after(cur, workflow, before, 100)
    assert fanout.appended_frames(before, tails) == read


STATUS = {"type": "workflow_status", "data": {"status": "RUNNING"}}


def _reads() -> float:
    return REGISTRY.get_sample_value("streamapp_event_reads_total") or 0.0


def _follow(hub_db: Database, db: Database, exec_id: str) -> tuple[fanout.Topics, Producer, Subscriber, int]:
    """Topics reading through ``hub_db``, with one caught-up stream of ``exec_id`` (no socket: it queues),
    and a producer of the same worker that knows the execution, so its appends take the known path."""
    topics = fanout.Topics(hub_db, queue_limit=100)
    producer = Producer(db, appended=topics.appended)
    last = producer.append_events(exec_id, [STATUS]).last_id
    sub = topics.subscribe(exec_id, 250)
    topics.caught_up(sub, last)
    return topics, producer, sub, last


@pytest.fixture
def followed(db, workflow):
    return _follow(db, db, workflow)


def test_a_workers_own_append_reaches_its_streams_before_the_producer_returns_and_without_a_read(followed, workflow):
    topics, producer, sub, last = followed
    reads = _reads()
    result = producer.append_events(workflow, [STATUS, STATUS])
    assert [item[0] for item in sub.take()[0]] == [last + 1, last + 2] == [result.first_id, result.last_id]
    topics.wake(workflow, result.last_id)  # the wake-up, when it comes, finds nothing left
    gevent.sleep(0.05)
    assert _reads() == reads and not sub.take()[0]


def test_a_read_in_flight_takes_them_instead_and_nothing_is_sent_twice(database, db, workflow):
    reader_db = Database(database, 1)
    reader_db._slots_semaphore = gevent.lock.BoundedSemaphore(1)  # cooperative, as it is in a gevent worker
    topics, producer, sub, last = _follow(reader_db, db, workflow)
    try:
        with reader_db.connection():  # the hub's read waits for this connection: it is in flight
            topics.wake(workflow, last + 1)  # as if a wake-up had come ahead of the producer's reply
            gevent.sleep(0)
            assert topics._topics[workflow].reading
            result = producer.append_events(workflow, [STATUS])
            assert not sub.take()[0]  # not from memory: the read covers them
        until(lambda: not topics._topics[workflow].fetching, 5, "the hub's read to finish")
        assert [item[0] for item in sub.take()[0]] == [result.first_id] == [last + 1]
    finally:
        reader_db.close()


def _items(first: int, last: int, size: int = 10) -> list[tuple[int, str, bytes]]:
    return [(n, "progress", b"x" * size) for n in range(first, last + 1)]


def _keep(topic, items, limit: int) -> None:
    """Deliver ``items`` to ``topic``'s recent frames, as ``Topics._deliver`` does."""
    topic.remember(items, fanout._size(items), limit)


def _ids(items) -> list[int]:
    return [item[0] for item in items]


def test_recent_frames_keep_the_newest_within_the_budget_and_end_at_the_cursor():
    topic = fanout._Topic("e")
    topic.cursor = 5
    _keep(topic, _items(6, 9), 30)
    topic.cursor = 9
    assert _ids(topic.recent) == [7, 8, 9] and topic.recent_bytes == 30
    assert _ids(topic.after(6)) == [7, 8, 9] and _ids(topic.after(8)) == [9]
    assert topic.after(9) == []  # at the cursor: nothing to replay, the hub sends what comes
    assert topic.after(5) is None  # frame 6 was dropped: the table has it
    assert topic.after(10) is None  # ahead of what the hub has read


def test_frames_that_do_not_follow_on_replace_the_recent_ones():
    topic = fanout._Topic("e")
    _keep(topic, _items(1, 3), 1000)
    _keep(topic, _items(5, 6), 1000)  # 4 is missing: never served as if it were not
    topic.cursor = 6
    assert _ids(topic.recent) == [5, 6]
    assert topic.after(3) is None and _ids(topic.after(4)) == [5, 6]


def test_a_replay_page_extends_the_recent_frames_back_only_without_a_gap_and_within_the_budget():
    topic = fanout._Topic("e")
    topic.cursor = 4
    topic.remember_before(_items(1, 4), limit=1000)  # the first stream's replay: nothing kept yet
    assert _ids(topic.recent) == [1, 2, 3, 4]
    _keep(topic, _items(5, 6), 1000)
    topic.cursor = 6
    topic.remember_before(_items(1, 7), limit=1000)  # runs past the hub's cursor: not taken
    topic.remember_before(_items(1, 2), limit=1000)  # nothing older than what is kept
    assert _ids(topic.recent) == [1, 2, 3, 4, 5, 6]

    late = fanout._Topic("e")
    late.cursor = 10
    _keep(late, _items(8, 10), 50)
    late.remember_before(_items(1, 6), limit=50)  # would leave 7 out
    assert _ids(late.recent) == [8, 9, 10]
    late.remember_before(_items(1, 7), limit=50)  # the newest of them that fit: 6 and 7
    assert _ids(late.recent) == [6, 7, 8, 9, 10] and late.recent_bytes == 50


@pytest.mark.parametrize("budget", [0, 4096])
def test_streams_replay_from_the_hubs_frames_only_with_a_budget(db, workflow, budget):
    topics = fanout.Topics(db, queue_limit=100, recent_budget=budget)
    producer = Producer(db, appended=topics.appended)
    last = producer.append_events(workflow, [STATUS]).last_id
    first = topics.subscribe(workflow, 250)
    topics.caught_up(first, last)
    result = producer.append_events(workflow, [STATUS, STATUS])  # framed in memory and delivered
    found = topics.recent(topics.subscribe(workflow, 250), last)
    if budget:
        assert _ids(found) == [result.first_id, result.last_id]
    else:
        assert found is None  # a budget of 0: every replay reads the table


def test_an_execution_keeps_a_quarter_of_the_budget_per_stream_that_follows_it(db, workflow):
    topics = fanout.Topics(db, queue_limit=100, recent_budget=400)
    alone = topics.subscribe(workflow, 250)
    topics.caught_up(alone, 0)
    topic = topics._topics[workflow]
    topics._deliver(topic, _items(1, 30))
    assert topic.recent_bytes == 100 and _ids(topic.recent) == list(range(21, 31))
    for _ in range(5):
        topics.subscribe(workflow, 250)
    topics._deliver(topic, _items(31, 80))
    assert topic.recent_bytes == 400 and _ids(topic.recent) == list(range(41, 81))  # the budget caps it
