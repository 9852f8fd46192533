"""``/metrics`` over real gunicorn workers and ``python app.py`` (SPEC §9, issue 13).

Every worker writes its own values and ``/metrics`` sums them, whichever
worker answers; a worker killed with SIGKILL takes none of its counters with
it, only its open-stream gauge. Every stream is read to its end before the
figures are read: a stream counts what it sent before its last byte.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import typing as t
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from streamapp import catalog
from tests.conftest import free_port
from tests.conftest import live_server
from tests.live.test_app_py import _run_app
from tests.live.test_app_py import _wait_for
from tests.live.test_app_py import _wait_ready
from tests.sse import Stream

pytestmark = pytest.mark.live

REASONS = ("user_limit", "worker_limit", "shutdown", "unavailable")
HISTOGRAMS = (
    "streamapp_stream_seconds",
    "streamapp_time_to_first_event_seconds",
    "streamapp_commit_to_send_seconds",
)
#: One of each: catalog types, and one of the producer's own, counted as "other".
EVENTS = [
    {"type": "workflow_start", "data": {"workflow_id": "w"}},
    {"type": "workflow_status", "data": {"status": "RUNNING"}},
    {"type": "progress", "data": {"n": 1}},
    {"type": "workflow_status", "data": {"status": "PAUSED"}},
]
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}
SENT_BY_TYPE = {"workflow_start": 1, "workflow_status": 2, "other": 1, "complete": 1}
ENV = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_POLL_MS": "250"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Metrics:
    """One scrape of ``/metrics``, parsed with prometheus-client's own parser."""

    def __init__(self, url: str) -> None:
        response = requests.get(url + "/metrics", timeout=10)
        assert response.status_code == 200
        self.text = response.text
        self.samples: Samples = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; a missing one fails the test (SPEC: every named series exists)."""
        key = (name, tuple(sorted(labels.items())))
        assert key in self.samples, f"{name}{labels} not exported"
        return self.samples[key]

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


def _workers(live_pid: int) -> list[psutil.Process]:
    return psutil.Process(live_pid).children()


def _worker_of(live_pid: int, stream: Stream) -> int:
    """The pid of the worker serving ``stream``: the one whose connection's far end is our socket."""
    ours = stream.response.raw.connection.sock.getsockname()[1]
    for worker in _workers(live_pid):
        if any(c.raddr and c.raddr.port == ours for c in worker.net_connections(kind="tcp")):
            return worker.pid
    raise AssertionError("no worker holds the stream")


def _open(url: str, headers: dict[str, str]) -> Stream:
    stream = Stream(url, headers)
    assert stream.response.status_code == 200, stream.response.text
    assert stream.next_item().retry is not None and stream.next_item() == "connected"
    return stream


def _spread(live, exec_id: str, headers: dict[str, str], at_least: int) -> dict[int, list[Stream]]:
    """Open streams of ``exec_id`` until both workers hold one (the kernel picks the worker); by worker."""
    url = f"{live.url}/api/v0/executions/workflows/{exec_id}/stream"
    by_worker: dict[int, list[Stream]] = {}
    opened = 0
    while opened < 40:
        stream = _open(url, headers)
        by_worker.setdefault(_worker_of(live.process.pid, stream), []).append(stream)
        opened += 1
        if opened >= at_least and len(by_worker) == 2:
            return by_worker
    raise AssertionError("the streams never spread over both workers")


def _all(by_worker: dict[int, list[Stream]]) -> list[Stream]:
    return [stream for streams in by_worker.values() for stream in streams]


def _workflow(url: str, headers: dict[str, str]) -> str:
    created = requests.post(f"{url}/api/v0/executions/workflows", json={"name": "wf"}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    return t.cast(str, created.json()["exec_id"])


def _append(url: str, exec_id: str, headers: dict[str, str], events: list[dict[str, t.Any]]) -> None:
    """Append over HTTP, so the server's own workers count the appends."""
    events_url = f"{url}/api/v0/executions/workflows/{exec_id}/events"
    response = requests.post(events_url, json={"events": events}, headers=headers, timeout=10)
    assert response.status_code == 201, response.text


def _read_to_the_end(streams: list[Stream]) -> None:
    for stream in streams:
        frames = stream.rest()
        assert [f.event for f in frames][-1] == "complete"
        assert len(frames) == len(EVENTS) + 1
        stream.close()


def _wait_for_new_worker(pid: int, gone: int, workers: int, url: str, deadline_s: float = 30.0) -> None:
    """Until gunicorn has replaced the killed worker and the server answers again."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = {w.pid for w in _workers(pid)}
        if gone not in pids and len(pids) == workers:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    return
        time.sleep(0.1)
    raise AssertionError("gunicorn never replaced the killed worker")


@pytest.fixture
def two_workers(database, tmp_path):
    with live_server(database, tmp_path, ENV, workers=2) as live:
        yield live


def test_a_fresh_server_exports_every_named_series_at_zero(two_workers):
    m = Metrics(two_workers.url)
    for kind in catalog.KINDS:
        assert m("streamapp_open_streams", kind=kind) == 0
        assert m("streamapp_streams_opened_total", kind=kind) == 0
    for reason in REASONS:
        assert m("streamapp_streams_refused_total", reason=reason) == 0
    for type_name in (*catalog.CATALOG, "other"):
        assert m("streamapp_events_sent_total", type=type_name) == 0
    for name in ("chunks_dropped", "slow_client_disconnects", "appends"):
        assert m(f"streamapp_{name}_total") == 0
    assert 0 <= m("streamapp_notification_queue_usage") < 1
    assert m("streamapp_listener_reconnects_total") >= 0
    for name in HISTOGRAMS:
        assert m(f"{name}_count") == 0 and m(f"{name}_sum") == 0
        assert m(f"{name}_bucket", le="+Inf") == 0
    # Multiprocess mode: one worker's process_* figures would pass for the server's.
    assert "process_" not in m.text


@pytest.fixture(params=["direct", "generator"])
def either_path(request, database, tmp_path):
    """Two workers, live frames written straight to sockets or through the generator: both count."""
    env = {**ENV, "STREAMAPP_DIRECT_WRITES": str(request.param == "direct").lower()}
    with live_server(database, tmp_path, env, workers=2) as live:
        yield live


def test_figures_sum_over_both_workers(either_path, account):
    live, headers = either_path, account.headers
    before = Metrics(live.url)
    exec_id = _workflow(live.url, headers)
    streams = _all(_spread(live, exec_id, headers, at_least=4))
    n = len(streams)
    _append(live.url, exec_id, headers, EVENTS)
    _append(live.url, exec_id, headers, [COMPLETE])
    _read_to_the_end(streams)

    after = Metrics(live.url)

    def delta(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    assert delta("streamapp_streams_opened_total", kind="workflow") == n
    assert after.total("streamapp_open_streams") == 0
    for type_name, count in SENT_BY_TYPE.items():
        assert delta("streamapp_events_sent_total", type=type_name) == count * n, type_name
    assert delta("streamapp_appends_total") == len(EVENTS) + 1
    # Every stream ended and got an event: one duration and one time to first event each.
    assert delta("streamapp_stream_seconds_count") == n
    assert delta("streamapp_time_to_first_event_seconds_count") == n
    assert delta("streamapp_time_to_first_event_seconds_bucket", le="+Inf") == n
    assert delta("streamapp_stream_seconds_sum") > 0
    # One observation per live batch written, whatever the number of streams it went to.
    assert 1 <= delta("streamapp_commit_to_send_seconds_count") <= 2 * n
    for name in HISTOGRAMS:
        buckets = [v for (s, _), v in after.samples.items() if s == f"{name}_bucket"]
        assert buckets == sorted(buckets) and buckets[-1] == after(f"{name}_count")


def test_a_killed_worker_keeps_its_counters_and_drops_its_open_streams(two_workers, account):
    live, headers = two_workers, account.headers
    exec_id = _workflow(live.url, headers)
    _append(live.url, exec_id, headers, EVENTS)
    ended = _all(_spread(live, exec_id, headers, at_least=4))
    _append(live.url, exec_id, headers, [COMPLETE])
    _read_to_the_end(ended)
    # Streams left open on both workers: the killed one's must leave the gauge, the other's stay.
    still_open = _spread(live, _workflow(live.url, headers), headers, at_least=2)
    before = Metrics(live.url)
    assert before.total("streamapp_open_streams") == len(_all(still_open))

    victim, survivor = sorted(still_open)
    os.kill(victim, signal.SIGKILL)
    _wait_for_new_worker(live.process.pid, victim, 2, live.url)

    after = Metrics(live.url)
    for name, labels in [
        ("streamapp_streams_opened_total", {"kind": "workflow"}),
        ("streamapp_appends_total", {}),
        ("streamapp_stream_seconds_count", {}),
        ("streamapp_time_to_first_event_seconds_count", {}),
        ("streamapp_commit_to_send_seconds_count", {}),
        *[("streamapp_events_sent_total", {"type": name}) for name in SENT_BY_TYPE],
    ]:
        assert after(name, **labels) >= before(name, **labels), name
    assert after("streamapp_streams_opened_total", kind="workflow") == before(
        "streamapp_streams_opened_total", kind="workflow"
    )
    # The survivor's streams are still counted; the dead worker's are gone.
    assert after.total("streamapp_open_streams") == len(still_open[survivor])
    for stream in _all(still_open):
        stream.close()


def test_app_py_serves_the_sum_of_its_workers(tmp_path: Path, database, account):
    """``python app.py`` builds the app in gunicorn's master: the workers must still share their figures."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _run_app(tmp_path, port, {"DATABASE_URL": database}) as (process, log):
        _wait_for(log, r"serving on", process)
        _wait_ready(port, log)
        fresh = Metrics(url)
        assert "process_" not in fresh.text
        assert fresh("streamapp_streams_refused_total", reason="shutdown") == 0
        exec_id = _workflow(url, account.headers)
        stream = _open(f"{url}/api/v0/executions/workflows/{exec_id}/stream", account.headers)
        _append(url, exec_id, account.headers, [*EVENTS, COMPLETE])
        _read_to_the_end([stream])
        before = Metrics(url)
        assert before("streamapp_streams_opened_total", kind="workflow") == 1
        assert before("streamapp_appends_total") == len(EVENTS) + 1

        (worker,) = _workers(process.pid)
        os.kill(worker.pid, signal.SIGKILL)
        _wait_for_new_worker(process.pid, worker.pid, 1, url)
        after = Metrics(url)
        assert "process_" not in after.text
        assert after("streamapp_streams_opened_total", kind="workflow") == 1
        assert after("streamapp_appends_total") == len(EVENTS) + 1
        assert after("streamapp_events_sent_total", type="complete") == 1


def _until_closed(live, deadline_s: float = 30.0) -> Metrics:
    """Until the server holds no open stream; the figures then."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        m = Metrics(live.url)
        if m.total("streamapp_open_streams") == 0:
            return m
        time.sleep(0.1)
    raise AssertionError("a stream stayed open")


@pytest.mark.parametrize("direct", [True, False])
def test_a_client_that_stops_reading_is_counted_as_slow(database, tmp_path, account, producer, direct):
    env = {**ENV, "STREAMAPP_SEND_TIMEOUT_S": "1", "STREAMAPP_DIRECT_WRITES": str(direct).lower()}
    exec_id = producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"]
    with live_server(database, tmp_path, env) as live:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            path = f"/api/v0/executions/workflows/{exec_id}/stream"
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {account.token}\r\n\r\n"
            sock.sendall(request.encode())
            assert sock.recv(12) == b"HTTP/1.1 200"
            blob = "x" * 200_000
            for n in range(40):  # 8 MB this client never reads
                producer.append_events(exec_id, [{"type": "progress", "data": {"n": n, "blob": blob}}])
            m = _until_closed(live)
        assert m("streamapp_slow_client_disconnects_total") == 1
        assert m("streamapp_stream_seconds_count") == 1


def test_refusals_are_counted_by_reason(database, tmp_path, auth):
    env = {**ENV, "STREAMAPP_MAX_STREAMS_PER_WORKER": "2", "STREAMAPP_MAX_STREAMS_PER_USER": "1"}
    first, second, third = auth.user(), auth.user(), auth.user()
    with live_server(database, tmp_path, env) as live:
        urls = {
            a.email: f"{live.url}/api/v0/executions/workflows/{_workflow(live.url, a.headers)}/stream"
            for a in (first, second, third)
        }
        streams = [_open(urls[first.email], first.headers)]
        assert requests.get(urls[first.email], headers=first.headers, timeout=10).status_code == 429
        streams.append(_open(urls[second.email], second.headers))
        assert requests.get(urls[third.email], headers=third.headers, timeout=10).status_code == 503
        m = Metrics(live.url)
        assert m("streamapp_streams_refused_total", reason="user_limit") == 1
        assert m("streamapp_streams_refused_total", reason="worker_limit") == 1
        assert m("streamapp_streams_refused_total", reason="unavailable") == 0
        assert m("streamapp_open_streams", kind="workflow") == 2
        for stream in streams:
            stream.close()
        # Clients that hang up are not slow ones.
        assert _until_closed(live)("streamapp_slow_client_disconnects_total") == 0
