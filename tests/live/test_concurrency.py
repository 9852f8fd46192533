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
    """Both delivery paths: frames written straight to parked sockets, and the plain generator."""
    env = {**SHARED_SERVER_ENV, "STREAMAPP_DIRECT_WRITES": str(request.param == "direct").lower()}
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


def _read_with_reconnects(server, account, workflow: str, total: int) -> tuple[list[int], int]:
    """Every id up to ``total``, read over streams cut after 1 to 40 frames; the ids and the streams opened."""
    received: list[int] = []
    rng = random.Random(7)
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
                if frame.event == "complete":
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
    from its recent frames while the producers append, and must miss nothing, repeat nothing."""
    total = PRODUCERS * EVENTS_EACH + 1
    with Stream(server.api(f"/executions/workflows/{workflow}/stream"), account.headers) as follower:
        follower.next_item()  # connected
        before = _memory_replays(server)
        errors: list[BaseException] = []
        producers = threading.Thread(target=_produce_then_complete, args=(producer, workflow, errors))
        producers.start()
        received, reconnects = _read_with_reconnects(server, account, workflow, total)
        producers.join()
        followed = [int(follower.next_frame(deadline_s=15).id) for _ in range(total)]
    assert not errors
    assert received == list(range(1, total + 1)) == followed
    assert _memory_replays(server) > before
