"""Where a stream's time to first event goes: one resumed stream at a time, taken apart.

One workflow with 40 stored catalog events; one gunicorn worker with its access log off
(``--access-logfile /dev/null``: the figure is the connect's, not the log's). Prints:

* time to first event of a resumed stream (new connection, ``Last-Event-ID`` in the history),
  p50 / p95, next to ``GET /healthz`` and ``GET /readyz`` (one database round trip) over the
  same kind of connection, and the worker's CPU per request of each kind;
* the latency of each query a stream connect runs, timed from this process with psycopg2
  (no gevent), next to ``SELECT 1``;
* with ``--profile``, py-spy's inclusive share of the stream path's steps and the functions
  with the largest inclusive share (``--profile FILE`` keeps the raw samples).

    PYTHONPATH=. .venv/bin/python -m bench.connect
    PYTHONPATH=. .venv/bin/python -m bench.connect --profile --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import time
import typing as t
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg2

from streamapp import accounts
from streamapp import slots
from streamapp import storage

from . import harness
from . import spy
from . import wire

HISTORY = 40
#: The steps of a stream connect whose inclusive share --profile prints.
STEPS = (
    "GeventWorker.handle_request",
    "Flask.wsgi_app",
    "stream (",
    "stream_user (",
    "TokenCache.get (",
    "_cursor_and_query (",
    "_admit (",
    "Slots.take_on_open (",
    "_body (",
    "_end (",
    "_replay (",
    "RequestContext.push (",
    "Parser.__next__ (",
)


def _plain(port: int, path: str) -> float:
    """Seconds from connect to the whole answer of a GET on a new connection."""
    started = time.perf_counter()
    with socket.create_connection((wire.HOST, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {wire.HOST}\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while data := sock.recv(65536):
            raw += data
    if not raw.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {raw[:200]!r}")
    return time.perf_counter() - started


def _loop(request: Callable[[], float], worker: psutil.Process, seconds: float) -> tuple[list[float], float]:
    """Milliseconds per request over ``seconds`` (after 50 untimed), and the worker's CPU ms per request."""
    for _ in range(50):
        request()
    cpu0, times = sum(worker.cpu_times()[:2]), []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(request() * 1000.0)
        time.sleep(0.005)
    return times, (sum(worker.cpu_times()[:2]) - cpu0) / len(times) * 1000.0


def _query_latencies(url: str, token: str, user_id: str, exec_id: str) -> dict[str, float]:
    """Median µs of each query a stream connect runs, over 1,000 after 100 untimed."""
    conn = psycopg2.connect(url, application_name=harness.APP_NAME)
    conn.autocommit = True
    cur = conn.cursor()

    reader = slots.Reader(user_id, any_owner=False, default_rule=True)

    def open_and_end() -> None:
        slots.open_stream(cur, "workflow", exec_id, HISTORY // 2, reader, "bench", 10**6, 30.0)
        slots.give_back(cur, "bench", {user_id: 1})

    steps: dict[str, Callable[[], t.Any]] = {
        "SELECT 1": lambda: cur.execute("SELECT 1"),
        "token lookup, once a heartbeat per worker (accounts.authenticate_token)": lambda: accounts.authenticate_token(
            cur, token
        ),
        "lookup and slot (slots.open_stream), and the slot's give-back": open_and_end,
        "first replay page (storage.frames_after)": lambda: storage.frames_after(cur, exec_id, HISTORY // 2, 5000),
    }
    out = {}
    for name, step in steps.items():
        for _ in range(100):
            step()
        times = []
        for _ in range(1000):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1e6)
        out[name] = harness.percentile(times, 50)
    conn.close()
    return out


def measure(args: argparse.Namespace, pg: harness.Postgres, tmp: Path, stack: contextlib.ExitStack) -> str:
    owner, token = pg.account()
    (exec_id,) = pg.executions(owner, 1, HISTORY, events=HISTORY + 1)
    server = harness.Server(pg, tmp, {}, ["--access-logfile", "/dev/null"])
    stack.callback(server.stop)
    cursor, path = HISTORY // 2, wire.stream_path(exec_id)

    def stream() -> float:
        reading = wire.read_stream(server.port, path, token, cursor, first_only=True, timeout=10)
        if reading.status != 200 or wire.event_ids(reading.items)[:1] != [cursor + 1]:
            raise RuntimeError(f"stream: status {reading.status}, ids {wire.event_ids(reading.items)[:3]}")
        return reading.seconds

    rows = []
    for label, request in (
        ("GET /healthz (no database)", lambda: _plain(server.port, "/healthz")),
        ("GET /readyz (one round trip)", lambda: _plain(server.port, "/readyz")),
    ):
        rows.append((label, *_loop(request, server.worker, args.seconds)))
    samples = Path(args.profile) if isinstance(args.profile, str) else tmp / "spy.txt"
    profiler = spy.record(server.worker.pid, args.seconds + 2, samples, rate=400) if args.profile else None
    rows.append(("GET …/stream, resumed: first event", *_loop(stream, server.worker, args.seconds)))
    if profiler is not None:
        profiler.wait(harness.WAIT_S)
    out = [
        harness.table(
            ["request, new connection each", "n", "p50 ms", "p95 ms", "worker CPU per request ms"],
            [
                [
                    label,
                    str(len(times)),
                    f"{harness.percentile(times, 50):.2f}",
                    f"{harness.percentile(times, 95):.2f}",
                    f"{cpu:.2f}",
                ]
                for label, times, cpu in rows
            ],
        )
    ]
    latencies = _query_latencies(pg.url, token, owner, exec_id)
    out.append(
        harness.table(
            ["query a stream connect runs (psycopg2, no gevent)", "p50 µs"],
            [[name, f"{us:.0f}"] for name, us in latencies.items()],
        )
    )
    if profiler is not None:
        out.append(
            harness.table(
                ["step of the stream loop (py-spy, inclusive, % of the worker's samples)", "share"],
                [[step.rstrip(" ("), f"{share:.1f}%"] for step, share in spy.shares(samples, STEPS).items()],
            )
        )
        out.append(
            harness.table(
                ["function (py-spy, inclusive, % of the worker's samples)", "share"],
                [[name, f"{share:.1f}%"] for name, share in spy.top(samples, 40)],
            )
        )
    return "\n\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.connect", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=7.0, help="length of each timed loop (7)")
    harness.profile_option(p, "during the stream loop")
    return p


def main(argv: list[str] | None = None) -> int:
    return harness.run("connect", parser(), measure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
