"""One stream's mailbox (SPEC §5): durable events are never dropped, a full queue makes the stream
re-read the table, text chunks past the limit are dropped and counted. Through its public methods
only (push, push_chunk, take, close), with frames read from a real PostgreSQL."""

from __future__ import annotations

import pytest

from streamapp import storage
from streamapp.subscriber import CHUNK_LIMIT
from streamapp.subscriber import Subscriber

WARNING = {"type": "warning", "data": {"code": "c", "message": "m"}}


@pytest.fixture
def frames(db, producer, workflow):
    """The stored frames of three events of ``workflow``, as the hub reads them."""
    producer.append_events(workflow, [WARNING] * 3)
    with db.transaction() as cur:
        items, more = storage.frames_after(cur, workflow, 0, 100)
    assert [i for i, _, _ in items] == [1, 2, 3] and not more
    return items


def _size(items) -> int:
    return sum(len(frame) for _, _, frame in items)


def test_queued_events_are_taken_in_order_and_wake_the_stream(workflow, frames):
    sub = Subscriber(workflow, limit=10, poll_ms=250)
    sub.push(frames[:2], _size(frames[:2]))
    assert sub.wakeup.is_set()
    sub.push(frames[2:], _size(frames[2:]))
    assert sub.take() == (frames, False)
    assert not sub.wakeup.is_set() and sub.take() == ([], False)


def test_a_full_queue_is_forgotten_and_the_stream_told_to_re_read(workflow, frames):
    sub = Subscriber(workflow, limit=2, poll_ms=250)
    sub.push(frames, _size(frames))  # one more than the limit
    assert sub.take() == ([], True)
    sub.push(frames[:1], _size(frames[:1]))  # after the re-read it queues again
    assert sub.take() == (frames[:1], False)


def test_chunks_past_the_limit_are_dropped_and_counted_but_events_still_queue(workflow, frames):
    sub = Subscriber(workflow, limit=CHUNK_LIMIT + len(frames), poll_ms=250, text_mode=True)
    for n in range(CHUNK_LIMIT + 3):
        sub.push_chunk(b"data: %d\n\n" % n)
    sub.push(frames, _size(frames))
    items, overflowed = sub.take()
    assert not overflowed and sub.dropped_chunks == 3
    assert [frame for _, _, frame in items[:CHUNK_LIMIT]] == [b"data: %d\n\n" % n for n in range(CHUNK_LIMIT)]
    assert items[CHUNK_LIMIT:] == frames


def test_a_stream_filtered_without_chunks_neither_queues_nor_drops_them(workflow):
    sub = Subscriber(workflow, limit=10, poll_ms=250)
    sub.types = frozenset({"warning"})
    sub.push_chunk(b"data: x\n\n")
    assert sub.take() == ([], False) and sub.dropped_chunks == 0


def test_the_first_reason_to_close_stays(workflow):
    sub = Subscriber(workflow, limit=10, poll_ms=250)
    sub.close("revoked")
    sub.close("shutdown")
    assert sub.closing and sub.reason == "revoked" and sub.wakeup.is_set()
