"""Faults under load (issue 11): nothing is lost, nothing is repeated.

200 streams over four executions read 5,000 events that the real Python
producer appends at a steady rate, while a gunicorn worker is SIGKILLed, the
hub's LISTEN connections are terminated and PostgreSQL restarts. Clients
resume with ``Last-Event-ID`` and honour ``Retry-After``, as SPEC §5 asks of
them. Every stream must end on ``complete`` having seen every event id of its
execution exactly once, in order. The reconnects and the longest gap between
two deliveries are printed, not asserted: figures belong in bench/.
"""

from __future__ import annotations

import signal
import threading
import time
import typing as t

import psutil
import psycopg2
import pytest
import requests

from streamapp import sse
from streamapp import storage
from streamapp.db import Database
from streamapp.producer import Producer
from tests.conftest import AuthActions
from tests.conftest import LiveServer
from tests.conftest import live_server
from tests.live.conftest import retrying

pytestmark = pytest.mark.live

STREAMS = 200
EXECUTIONS = 4
EVENTS = 5000
RATE = 200  # events a second, so the faults land while events flow
DEADLINE_S = 120
OUTAGE_S = 2.0


class Client(threading.Thread):
    """One stream, read with the project's SSE parser; reconnects as a well-behaved client does."""

    def __init__(self, url: str, headers: dict[str, str], end: float) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.end = url, headers, end
        self.ids: list[int] = []
        self.reconnects = 0
        self.longest_gap = 0.0
        self.done = False
        self.failure: str | None = None

    def run(self) -> None:
        last_seen: float | None = None
        while not self.done and time.monotonic() < self.end:
            headers = dict(self.headers)
            if self.ids:
                headers["Last-Event-ID"] = str(self.ids[-1])
            wait = 0.2  # a reconnect after a stream that ended or broke
            try:
                with requests.get(self.url, headers=headers, stream=True, timeout=(5, 10)) as answer:
                    if answer.status_code == 204:
                        self.done = True  # past the terminal event: nothing more will come
                        return
                    if answer.status_code in (429, 503):
                        wait = float(answer.headers.get("Retry-After", "1"))
                    elif answer.status_code != 200:
                        self.failure = f"{answer.status_code}: {answer.text[:200]}"
                        return
                    else:
                        last_seen = self._read(answer, last_seen)
            except requests.RequestException:
                pass  # a worker killed under us: reconnect
            if not self.done:
                self.reconnects += 1
                time.sleep(wait)

    def _read(self, answer: requests.Response, last_seen: float | None) -> float | None:
        decoder = sse.Decoder()
        for chunk in answer.iter_content(chunk_size=None):
            for item in decoder.feed(chunk):
                if not isinstance(item, sse.Message) or item.id is None:
                    continue
                now = time.monotonic()
                if last_seen is not None:
                    self.longest_gap = max(self.longest_gap, now - last_seen)
                last_seen = now
                self.ids.append(int(item.id))
                if item.type == "complete":
                    self.done = True
                    return last_seen
        return last_seen


def _listener_backends(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'streamapp-listener'"
        )
        return int(cur.fetchone()[0])


def _last_ids(db: Database, exec_ids: list[str]) -> dict[str, int]:
    with db.autocommit() as cur:
        return storage.last_event_ids(cur, exec_ids)


def _kill_a_worker(live: LiveServer) -> int:
    worker = psutil.Process(live.process.pid).children()[0]
    worker.send_signal(signal.SIGKILL)
    return worker.pid


def _produce(producer: Producer, exec_ids: list[str], faults: dict[int, threading.Event]) -> None:
    """EVENTS events at RATE a second, round robin, then ``complete`` on each execution."""
    start = time.monotonic()
    for n in range(EVENTS):
        if n in faults:
            faults[n].set()
        delay = start + n / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _append(producer, exec_ids[n % len(exec_ids)], {"type": "progress", "data": {"n": n}})
    for exec_id in exec_ids:
        _append(producer, exec_id, {"type": "complete", "data": {"status": "SUCCESS"}})


def _append(producer: Producer, exec_id: str, event: dict[str, t.Any]) -> None:
    retrying(lambda: producer.append_events(exec_id, [event]))


def test_streams_lose_and_repeat_nothing_through_a_killed_worker_listener_and_database(tmp_path, own_postgres):
    pg = own_postgres
    db = Database(pg.url, 2)
    account = AuthActions(db).user()
    producer = Producer(db)
    owner = account.user.get_id()
    exec_ids = [producer.create_execution("workflow", "wf", owner)["exec_id"] for _ in range(EXECUTIONS)]
    env = {
        "STREAMAPP_HEARTBEAT_S": "1",
        "STREAMAPP_POLL_MS": "250",
        "STREAMAPP_RETRY_MS": "500",
        "STREAMAPP_MAX_STREAMS_PER_USER": "1000",
    }
    faults = {EVENTS // 4: threading.Event(), EVENTS // 2: threading.Event(), EVENTS * 3 // 4: threading.Event()}
    started = time.monotonic()
    with live_server(pg.url, tmp_path, env, workers=2) as live:
        end = time.monotonic() + DEADLINE_S
        clients = [
            Client(live.api(f"/executions/workflows/{exec_ids[i % EXECUTIONS]}/stream"), account.headers, end)
            for i in range(STREAMS)
        ]
        for client in clients:
            client.start()
        producing = threading.Thread(target=_produce, args=(producer, exec_ids, faults), daemon=True)
        producing.start()
        kill, listener, restart = (faults[k] for k in sorted(faults))
        assert kill.wait(DEADLINE_S)
        killed = _kill_a_worker(live)
        assert listener.wait(DEADLINE_S)
        terminated = _listener_backends(pg.url)
        assert restart.wait(DEADLINE_S)
        stopping = time.monotonic()
        pg.stop()
        time.sleep(OUTAGE_S)  # the fault itself: PostgreSQL stays down a while, as in a real restart
        pg.start()
        down_s = time.monotonic() - stopping
        producing.join(DEADLINE_S)
        assert not producing.is_alive(), "the producer did not finish"
        for client in clients:
            client.join(max(0.0, end - time.monotonic()))
        log = live.log_text()

    last_ids = retrying(lambda: _last_ids(db, exec_ids))
    db.close()
    wall = time.monotonic() - started
    gaps = sorted(c.longest_gap for c in clients)
    print(
        f"\nfaults: worker {killed} SIGKILLed at event {EVENTS // 4}, {terminated} listener(s) terminated at "
        f"{EVENTS // 2}, PostgreSQL restarted at {EVENTS * 3 // 4} (down {down_s:.1f} s)"
        f"\nstreams {STREAMS}, events {EVENTS} + {EXECUTIONS} complete, wall {wall:.1f} s"
        f"\nreconnects: {sum(c.reconnects for c in clients)} in all, at most {max(c.reconnects for c in clients)} "
        f"for one stream"
        f"\nlongest delivery gap: {gaps[-1]:.2f} s (median stream's longest {gaps[len(gaps) // 2]:.2f} s)"
    )
    failures = [c.failure for c in clients if c.failure]
    assert not failures, failures[:5]
    for i, client in enumerate(clients):
        expected = list(range(1, last_ids[exec_ids[i % EXECUTIONS]] + 1))
        assert client.done, f"stream {i} did not reach complete: {len(client.ids)} of {len(expected)} ids"
        assert client.ids == expected, f"stream {i}: ids differ from the table's (lost, repeated or out of order)"
    assert "Traceback" not in log, log[-3000:]
