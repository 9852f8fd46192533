#!/usr/bin/env python
"""Where a stream's time to first event goes: one resumed stream at a time, taken apart.

Starts ``gunicorn -c gunicorn.conf.py app:app --workers 1`` on a free loopback
port against an embedded PostgreSQL in a temporary directory (or a fresh
database inside ``DATABASE_URL``'s server), stores 40 events on one workflow,
then prints:

* time to first event of a resumed stream (new connection, ``Last-Event-ID``
  in the history), p50 / p95, next to ``GET /healthz`` and ``GET /readyz``
  (one database round trip) over the same kind of connection;
* the worker's CPU per request of each kind (psutil, over the whole loop);
* the latency of each query a stream connect runs, timed from this process
  with psycopg2 (no gevent), next to ``SELECT 1``;
* with ``--profile``, py-spy's inclusive share of the stream path's steps.

    .venv/bin/python bench/connect.py
    .venv/bin/python bench/connect.py --profile --seconds 10

Everything started here is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamapp import accounts  # noqa: E402
from streamapp import embedded  # noqa: E402
from streamapp import migrate  # noqa: E402
from streamapp import slots  # noqa: E402
from streamapp import storage  # noqa: E402
from streamapp.db import Database  # noqa: E402
from streamapp.producer import Producer  # noqa: E402

HISTORY = 40
#: The steps of a stream connect whose inclusive share --profile prints.
STEPS = (
    "GeventWorker.handle_request", "Flask.wsgi_app", "stream (", "require (", "authenticate_token (",
    "_cursor_and_query (", "visible_execution (", "_take_slot (", "_generate (", "_replay (",
    "RequestContext.push (", "Parser.__next__ (",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, head: str, done: t.Callable[[bytes], bool]) -> float:
    """Milliseconds from sending ``head`` on a new connection until ``done(received)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.perf_counter()
        s.sendall(head.encode())
        received = b""
        while not done(received):
            data = s.recv(65536)
            if not data:
                raise RuntimeError(f"connection closed: {received[:300]!r}")
            received += data
        return (time.perf_counter() - started) * 1000.0


def _loop(port: int, head: str, done: t.Callable[[bytes], bool], worker: psutil.Process,
          seconds: float) -> tuple[list[float], float]:
    for _ in range(50):  # warm up
        _request(port, head, done)
    cpu0, times = sum(worker.cpu_times()[:2]), []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(_request(port, head, done))
        time.sleep(0.005)
    return times, (sum(worker.cpu_times()[:2]) - cpu0) / len(times) * 1000.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _query_latencies(url: str, token: str, user_id: str, exec_id: str) -> dict[str, float]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    steps: dict[str, t.Callable[[], t.Any]] = {
        "SELECT 1": lambda: cur.execute("SELECT 1"),
        "token lookup (accounts.authenticate_token)": lambda: accounts.authenticate_token(cur, token),
        "execution lookup (storage.get_execution)": lambda: storage.get_execution(cur, "workflow", exec_id),
        "per-user count (slots.take + give_back)": lambda: (
            slots.take(cur, user_id, "bench", 10**6, 30.0), slots.give_back(cur, user_id, "bench")),
        "first replay page (storage.events_after)": lambda: storage.events_after(cur, exec_id, 20, 5000),
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
        out[name] = statistics.median(times)
    conn.close()
    return out


def _profile_shares(path: Path) -> dict[str, float]:
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for step in STEPS:
            if step in stack:
                inclusive[step] += int(count)
    return {step: 100.0 * inclusive[step] / total for step in STEPS} if total else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=7.0, help="length of each timed loop (7)")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during the stream loop")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="streamapp-connect-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        server_url = os.environ.get("DATABASE_URL") or embedded.start(tmp / "pg")
        name = "streamapp_connect_" + secrets.token_hex(4)
        admin = psycopg2.connect(server_url)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        stack.callback(lambda: admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        dsn = psycopg2.extensions.parse_dsn(server_url)
        dsn["dbname"] = name
        url = psycopg2.extensions.make_dsn(**dsn)
        db = Database(url, 2)
        stack.callback(db.close)
        migrate.upgrade(db)
        with db.transaction() as cur:
            user = accounts.create_user(cur, f"connect-{secrets.token_hex(3)}@example.com", secrets.token_urlsafe(12))
            token = accounts.create_token(cur, user.id, ["read"])
        producer = Producer(db)
        exec_id = producer.create_execution("workflow", "connect", user.id)["exec_id"]
        for n in range(HISTORY):
            producer.append_events(exec_id, [{"type": "warning", "data": {"code": "n", "message": str(n)}}])

        port = _free_port()
        env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": secrets.token_urlsafe(32),
               "STREAMAPP_MAX_STREAMS_PER_USER": "1000000", "STREAMAPP_STREAM_LIFETIME_S": "7200"}
        log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115 (closed by the stack)
        stack.callback(log.close)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app", "--workers", "1",
             "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        stack.callback(lambda: (server.terminate(), server.wait(20)))
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                if b" 200 " in _raw(port, "/readyz"):
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"gunicorn did not become ready; its log: {tmp / 'gunicorn.log'}")
            time.sleep(0.1)
        worker = psutil.Process(server.pid).children()[0]

        def plain(path: str) -> tuple[str, t.Callable[[bytes], bool]]:
            return (f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
                    lambda body: body.startswith(b"HTTP/1.1 200") and body.endswith(b"}\n"))

        cursor = HISTORY // 2
        stream_head = (f"GET /api/v0/executions/workflows/{exec_id}/stream HTTP/1.1\r\nHost: bench\r\n"
                       f"Authorization: Bearer {token}\r\nLast-Event-ID: {cursor}\r\n\r\n")
        marker = b"\nid: %d\n" % (cursor + 1)

        def first_event(body: bytes) -> bool:
            at = body.find(marker)
            return at >= 0 and body.find(b"\n\n", at) >= 0

        rows = []
        for label, (head, done) in (("GET /healthz (no database)", plain("/healthz")),
                                    ("GET /readyz (one round trip)", plain("/readyz"))):
            times, cpu = _loop(port, head, done, worker, args.seconds)
            rows.append((label, times, cpu))
        spy = None
        if args.profile:
            spy_bin = Path(sys.executable).parent / "py-spy"
            spy = subprocess.Popen([str(spy_bin), "record", "-p", str(worker.pid), "-o", str(tmp / "spy.txt"),
                                    "-f", "raw", "-r", "400", "--nonblocking", "-d", str(int(args.seconds) + 2)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        times, cpu = _loop(port, stream_head, first_event, worker, args.seconds)
        rows.append(("GET …/stream, resumed: first event", times, cpu))
        if spy is not None:
            spy.wait(60)

        print("| request, new connection each | n | p50 ms | p95 ms | worker CPU per request ms |")
        print("|---|---|---|---|---|")
        for label, times, cpu in rows:
            print(f"| {label} | {len(times)} | {statistics.median(times):.2f} | {_pct(times, 95):.2f} | {cpu:.2f} |")
        print("\n| query a stream connect runs (psycopg2, no gevent) | p50 µs |\n|---|---|")
        for label, micros in _query_latencies(url, token, str(user.id), exec_id).items():
            print(f"| {label} | {micros:.0f} |")
        if spy is not None:
            print("\n| step of the stream loop (py-spy, inclusive, % of the worker's non-idle samples) | share |")
            print("|---|---|")
            for step, share in _profile_shares(tmp / "spy.txt").items():
                print(f"| {step.rstrip(' (')} | {share:.1f}% |")
        print(f"\ncommand: {' '.join(['bench/connect.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 0


def _raw(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return s.recv(4096)


if __name__ == "__main__":
    sys.exit(main())
