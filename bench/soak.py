#!/usr/bin/env python
"""Soak: 1,000 streams that disconnect at random, a steady append rate, for minutes (issue 13).

Starts PostgreSQL (embedded, in a temporary directory, or a fresh database in
``DATABASE_URL``'s server) and ``gunicorn -c gunicorn.conf.py app:app`` with 2
gevent workers on a free loopback port. Client processes (gevent, the
standard library's ``http.client`` and the project's parser ``streamapp.sse``)
hold ``--streams`` streams over ``--executions`` running workflows of ``--users``
owners; each stream hangs up at random (exponential, mean ``--disconnect-mean-s``)
and resumes at once with ``Last-Event-ID``, and resumes at once too when the
server ends it (lifetime). A publisher process appends ``--rate`` catalog events per second,
one per authenticated HTTP POST, round-robin over the executions. Every 10 s
it records the server processes' resident memory and open file descriptors,
the database's connections (``pg_stat_activity``) and the open streams.

At the end the publisher stops, every execution gets its ``complete`` event,
and each stream must have received every id from 1 to that ``complete``
exactly once. The report (a Markdown table) gives availability (the share of
the measured window each stream had a 200 response open: the client waits only
on refusals and errors, so every gap is the server's), events lost and
duplicated (must be 0), reconnects and the gap each one left, and memory,
descriptors and connections over time (before the streams, first / last / max).

Run it from the repository root as a module, so ``streamapp`` is the package
in this tree::

    .venv/bin/python -m bench.soak                       # 15 minutes, 1,000 streams
    .venv/bin/python -m bench.soak --minutes 2 --streams 200

Everything started here is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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

from streamapp import accounts
from streamapp import embedded
from streamapp import migrate
from streamapp.db import Database
from streamapp.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_S = 30.0  # streams connect in the first 10 s; the measured window starts after this
DRAIN_S = 120.0  # after the terminal events, how long streams get to finish
SAMPLE_S = 10.0


# -- the soak run ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database(stack: contextlib.ExitStack, tmp: Path) -> str:
    """A fresh, migrated database; its URL."""
    server_url = os.environ.get("DATABASE_URL") or embedded.start(tmp / "pg")
    name = "streamapp_soak_" + secrets.token_hex(4)
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    stack.callback(lambda: admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    dsn = psycopg2.extensions.parse_dsn(server_url)
    dsn["dbname"] = name
    url: str = psycopg2.extensions.make_dsn(**dsn)
    db = Database(url, 2)
    migrate.upgrade(db)
    db.close()
    return url


def _gunicorn(stack: contextlib.ExitStack, url: str, tmp: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "STREAMAPP_MAX_STREAMS_PER_USER": "1000000",
    }
    log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115 (closed by the stack)
    stack.callback(log.close)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "app:app",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        server.terminate()
        server.wait(30)

    stack.callback(stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(4096):
                    return server, port
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not become ready; its log: {tmp / 'gunicorn.log'}")


def _sample(master: psutil.Process, db_name: str, admin: t.Any, clients: list[Path]) -> dict[str, t.Any]:
    procs = [master, *master.children()]
    rss = fds = 0
    workers = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            mem, nfds = proc.memory_info().rss, proc.num_fds()
            rss, fds = rss + mem, fds + nfds
            if proc is not master:
                workers.append(mem)
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,))
        connections = cur.fetchone()[0]
    connected = 0
    for path in clients:
        with contextlib.suppress(OSError, ValueError):
            connected += json.loads(Path(str(path) + ".status").read_text())["connected"]
    return {
        "t": time.time(),
        "rss_mib": rss / 2**20,
        "worker_rss_mib": [w / 2**20 for w in workers],
        "fds": fds,
        "db_connections": connections,
        "open_streams": connected,
        "workers": len(workers),
    }


def _run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict[str, t.Any]:
    url = _database(stack, tmp)
    db = Database(url, 2)
    users: list[tuple[str, str]] = []  # (user id, token)
    with db.transaction() as cur:
        for _ in range(args.users):
            user = accounts.create_user(cur, f"soak-{secrets.token_hex(3)}@example.com", secrets.token_urlsafe(12))
            users.append((str(user.id), accounts.create_token(cur, user.id, ["read", "publish"])))
    producer = Producer(db)
    owners = [users[n % len(users)] for n in range(args.executions)]
    exec_ids = [producer.create_execution("workflow", "soak", owner)["exec_id"] for owner, _ in owners]
    server, port = _gunicorn(stack, url, tmp, args.workers)
    master = psutil.Process(server.pid)
    start = time.time() + 5
    window = (start + WARM_UP_S, start + WARM_UP_S + args.minutes * 60)
    # bench/soak_load.py's Plan, as JSON.
    plan = {
        "port": port,
        "exec_ids": exec_ids,
        "tokens": [token for _, token in owners],
        "start": start,
        "window": window,
        "hard_end": window[1] + DRAIN_S,
        "disconnect_mean_s": args.disconnect_mean_s,
        "rate": args.rate,
    }
    admin = psycopg2.connect(url)
    admin.autocommit = True
    db_name = psycopg2.extensions.parse_dsn(url)["dbname"]
    baseline = _sample(master, db_name, admin, [])  # the server up, no stream yet
    children, outs = [], []
    per_client = -(-args.streams // args.clients)
    for n in range(args.clients):
        out = tmp / f"client-{n}.json"
        numbers = list(range(n * per_client, min(args.streams, (n + 1) * per_client)))
        children.append(_spawn("client", {**plan, "streams": numbers, "out": str(out)}))
        outs.append(out)
    publisher_out = tmp / "publisher.json"
    children.append(_spawn("publisher", {**plan, "out": str(publisher_out)}))
    for child in children:
        stack.callback(_kill_if_running, child)
    samples = []
    time.sleep(max(0.0, window[0] - time.time()))
    while time.time() < window[1]:
        samples.append(_sample(master, db_name, admin, outs))
        time.sleep(max(0.0, min(SAMPLE_S, window[1] - time.time())))
        print(f"[{time.strftime('%H:%M:%S')}] {json.dumps(samples[-1])}", file=sys.stderr, flush=True)
    children[-1].wait(120)  # the publisher: every append answered
    for exec_id in exec_ids:
        producer.append_events(exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])
    with db.transaction() as cur:
        cur.execute("SELECT exec_id, last_event_id FROM executions WHERE exec_id = ANY(%s)", (exec_ids,))
        final = dict(cur.fetchall())
    for child in children[:-1]:
        child.wait(DRAIN_S + 60)
    db.close()
    admin.close()
    streams = [row for out in outs for row in json.loads(out.read_text())]
    return {
        "args": vars(args),
        "baseline": baseline,
        "samples": samples,
        "streams": streams,
        "final": final,
        "publisher": json.loads(publisher_out.read_text()),
        "window_s": window[1] - window[0],
        "publish_s": window[1] - start,
    }


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


def _spawn(role: str, plan: dict[str, t.Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.soak_load", role, json.dumps(plan)], cwd=ROOT)


def _report(result: dict[str, t.Any]) -> str:
    streams, final, window_s = result["streams"], result["final"], result["window_s"]
    availability = sorted(s["connected_s"] / window_s for s in streams)
    missing = sum(max(0, final[s["exec_id"]] - s["last"]) for s in streams)
    lost = sum(s["lost"] for s in streams) + missing
    duplicated = sum(s["duplicated"] for s in streams)
    expected = sum(final[s["exec_id"]] for s in streams)
    publisher = result["publisher"]
    lat = sorted(publisher["latencies_ms"]) or [0.0]
    total = {key: sum(s[key] for s in streams) for key in ("hang_ups", "server_ends", "refused", "errors", "connects")}
    gaps = sorted(1000 * gap for s in streams for gap in s["gaps"]) or [0.0]
    kinds: dict[str, int] = {}
    for s in streams:
        for kind, count in s["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    args = result["args"]
    lines = [
        f"Soak: {len(streams):,} streams of {args['users']} users over {len(final)} executions, "
        f"{args['workers']} gevent workers, "
        f"{args['minutes']:g} min measured, {args['rate']:g} appends/s requested",
        "",
        "| figure | value |",
        "|---|---|",
        f"| availability per stream (share of the window with a 200 open), min / median / mean | "
        f"{100 * availability[0]:.3f}% / {100 * statistics.median(availability):.3f}% / "
        f"{100 * statistics.fmean(availability):.3f}% |",
        f"| streams below 99.9% | {sum(a < 0.999 for a in availability)} |",
        f"| events expected / received once | {expected:,} / {expected - lost:,} |",
        f"| events lost / duplicated | {lost} / {duplicated} |",
        f"| streams that got their complete event | {sum(s['done'] for s in streams):,} / {len(streams):,} |",
        f"| appends answered 201 / failed; rate achieved | {publisher['ok']:,} / {publisher['failed']:,}; "
        f"{publisher['ok'] / result['publish_s']:.1f}/s |",
        f"| append latency p50 / p99 ms | {lat[len(lat) // 2]:.1f} / {lat[int(len(lat) * 0.99)]:.1f} |",
        f"| connections opened; client hang-ups / server ends (lifetime) / refused / errors | {total['connects']:,}; "
        f"{total['hang_ups']:,} / {total['server_ends']:,} / {total['refused']:,} / {total['errors']:,} "
        f"{json.dumps(kinds) if kinds else ''}|",
        f"| reconnect gap (connection end → next 200), p50 / p99 / max ms, n | {gaps[len(gaps) // 2]:.1f} / "
        f"{gaps[int(len(gaps) * 0.99)]:.1f} / {gaps[-1]:.1f}, {len(gaps):,} |",
        "",
        "| over the window (every 10 s) | before the streams | first | last | max |",
        "|---|---|---|---|---|",
    ]
    samples, baseline = result["samples"], result["baseline"]
    for label, key, fmt in (
        ("server RSS, master + workers, MiB", "rss_mib", "{:.1f}"),
        ("largest worker RSS, MiB", "max_worker", "{:.1f}"),
        ("server file descriptors", "fds", "{:d}"),
        ("database connections (pg_stat_activity)", "db_connections", "{:d}"),
        ("open streams (clients connected)", "open_streams", "{:d}"),
    ):
        values = [
            max(s["worker_rss_mib"], default=0.0) if key == "max_worker" else s[key] for s in [baseline, *samples]
        ]
        if len(values) > 1:
            before, first, last, top = (fmt.format(v) for v in (values[0], values[1], values[-1], max(values[1:])))
            lines.append(f"| {label} | {before} | {first} | {last} | {top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="measured minutes (15)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=80.0, help="appends per second, one per POST (80)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=10, help="owners of the executions and their streams (10)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument(
        "--disconnect-mean-s",
        type=float,
        default=120.0,
        help="mean seconds a stream stays before its client hangs up (120)",
    )
    parser.add_argument("--json", help="write every figure and sample to this file")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the workers inherit it
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="streamapp-soak-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        result = _run(args, tmp, stack)
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    print(_report(result))
    print(
        f"\ncommand: python -m bench.soak {' '.join(argv if argv is not None else sys.argv[1:])} "
        f"({(time.monotonic() - started) / 60:.1f} min in all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
