"""Concurrent producers and a reader that disconnects and resumes at random (SPEC §3)."""

from __future__ import annotations

import random
import re
import threading

import pytest
import requests

from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

PRODUCERS = 4
EVENTS_EACH = 60


@pytest.fixture(scope="module", params=["direct", "generator"])
def server(request, database, tmp_path_factory):
    """Both delivery paths: frames written straight to parked streams' sockets, and the plain generator.

    The recent frames hold a whole execution here, so that every reconnect beside a follower
    replays from them while the producers append.
    """
    env = {
        **SHARED_SERVER_ENV,
        "STREAMAPP_DIRECT_WRITES": str(request.param == "direct").lower(),
        "STREAMAPP_RECENT_FRAMES_BYTES": str(1024 * 1024),
    }
    with live_server(database, tmp_path_factory.mktemp(request.param), env) as live:
        live.direct = request.param == "direct"
        yield live


def _produce(producer, exec_id: str, errors: list[BaseException]) -> None:
    try:
        for n in range(EVENTS_EACH):
            producer.append_events(exec_id, [{"type": "progress", "data": {"n": n}}])
    except BaseException as exc:  # surfaced by the test thread below
        errors.append(exc)


def _produce_then_complete(producer, exec_id: str, errors: list[BaseException]) -> None:
    threads = [threading.Thread(target=_produce, args=(producer, exec_id, errors)) for _ in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.append_events(exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])


def _read_with_reconnects(
    server, account, workflow: str, total: int, received: list[int] | None = None
) -> tuple[list[int], int]:
    """Every id up to ``total`` (after those ``received`` already), read over streams cut after 1 to 40
    frames; the ids and the streams opened."""
    received = received if received is not None else []
    rng = random.Random(7 + len(received))
    url = server.api(f"/executions/workflows/{workflow}/stream")
    reconnects = 0
    while not received or received[-1] != total:
        headers = {**account.headers, "Last-Event-ID": str(received[-1] if received else 0)}
        with Stream(url, headers) as stream:
            reconnects += 1
            for _ in range(rng.randint(1, 40)):
                try:
                    frame = stream.next_frame(deadline_s=15)
                except EOFError:
                    break
                received.append(int(frame.id))
                if frame.event == "complete" or received[-1] == total:
                    break
    return received, reconnects


def test_reader_gets_every_id_once_in_order(server, account, workflow, producer):
    errors: list[BaseException] = []
    producers = threading.Thread(target=_produce_then_complete, args=(producer, workflow, errors))
    producers.start()
    total = PRODUCERS * EVENTS_EACH + 1
    received, reconnects = _read_with_reconnects(server, account, workflow, total)
    producers.join()
    assert not errors
    assert received == list(range(1, total + 1))
    assert reconnects > 3


def _memory_replays(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return float(re.search(r'^streamapp_replays_total\{source="memory"\} (\S+)$', text, re.M).group(1))


def test_beside_a_follower_reconnects_replay_from_memory_and_still_get_every_id_once(
    server, account, workflow, producer
):
    """A stream that stays open keeps the execution followed by the worker: reconnects then replay
    from its recent frames while the producers append, and must miss nothing, repeat nothing.
    The terminal event waits for the reader: an execution that ended replays from the table."""
    progress = PRODUCERS * EVENTS_EACH
    with Stream(server.api(f"/executions/workflows/{workflow}/stream"), account.headers) as follower:
        while follower.next_item() != "ping":
            pass  # a ping comes only from a stream past its replay: the hub has read the execution
        before = _memory_replays(server)
        errors: list[BaseException] = []
        producers = [threading.Thread(target=_produce, args=(producer, workflow, errors)) for _ in range(PRODUCERS)]
        for thread in producers:
            thread.start()
        received, reconnects = _read_with_reconnects(server, account, workflow, progress)
        for thread in producers:
            thread.join()
        from_memory = _memory_replays(server) - before
        producer.append_events(workflow, [{"type": "complete", "data": {"status": "SUCCESS"}}])
        received, _ = _read_with_reconnects(server, account, workflow, progress + 1, received)
        followed = [int(follower.next_frame(deadline_s=15).id) for _ in range(progress + 1)]
    assert not errors
    assert received == list(range(1, progress + 2)) == followed
    assert reconnects > 3 and from_memory == reconnects  # every one: the recent frames hold it all
