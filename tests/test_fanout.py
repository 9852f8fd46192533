"""Streams whose terminal event the hub wrote end when the worker is idle (``fanout.Endings``, issue 10):
all of them, in batches, and within a bound even on a worker that is never idle."""

from __future__ import annotations

import time

import gevent

from streamapp.fanout import Endings
from streamapp.subscriber import Subscriber


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
