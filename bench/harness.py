"""The bench harness: PostgreSQL, the server, load processes, accounts, percentiles, CPU and the table.

PostgreSQL is the embedded one under ``var/bench-pg`` (``streamapp.embedded``), or the
server ``DATABASE_URL`` names; each run gets a fresh, migrated database in it, dropped
at the end. The server is ``gunicorn -c gunicorn.conf.py app:app --workers 1`` with the
project's environment variables. Load runs in processes of their own (``Child``) that
speak one JSON object per line on stdin and stdout. CPU is read with psutil for the
whole machine and for the server's and PostgreSQL's process trees around a measured
phase, so every figure stands beside what the machine was doing (issue 10).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import resource
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extensions

from streamapp import accounts
from streamapp import embedded
from streamapp import migrate
from streamapp.db import Database
from streamapp.producer import Producer

from . import wire

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "streamapp-bench"
#: A bound on every wait for a process of ours.
WAIT_S = 60.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def tree(pid: int | None) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        if pid:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
    return []


class Postgres:
    """A fresh, migrated database for one run; ``db`` is a small pool on it."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        admin_url = os.environ.get("DATABASE_URL") or embedded.start(ROOT / "var" / "bench-pg")
        self.admin = psycopg2.connect(admin_url, application_name=APP_NAME)
        self.admin.autocommit = True
        self.name = f"streamapp_bench_{secrets.token_hex(4)}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
            stack.callback(self._drop)
            cur.execute("SELECT current_setting('server_version'), pg_backend_pid()")
            self.version, backend = t.cast(tuple[str, int], cur.fetchone())
        # Our backend's parent is the postmaster when the server runs on this machine.
        self.postmaster: int | None = None
        with contextlib.suppress(psutil.Error, AttributeError):
            parent = psutil.Process(backend).parent()
            self.postmaster = parent.pid if "postgres" in parent.name() else None
        dsn = psycopg2.extensions.parse_dsn(admin_url)
        dsn["dbname"] = self.name
        self.url = psycopg2.extensions.make_dsn(**dsn)
        self.db = Database(self.url, 4, application_name=APP_NAME)
        stack.callback(self.db.close)
        migrate.upgrade(self.db)

    def _drop(self) -> None:
        with contextlib.suppress(psycopg2.Error), self.admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()

    def processes(self) -> list[psutil.Process]:
        """The server's processes (every database's backends); none when it runs elsewhere."""
        return tree(self.postmaster)

    def connections(self) -> int:
        """Client backends on this run's database, the bench's own excluded."""
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name NOT LIKE %s",
                (self.name, APP_NAME + "%"),
            )
            return int(t.cast(tuple[int], cur.fetchone())[0])

    def account(self) -> tuple[str, str]:
        """A new user and a read+publish token through the real accounts module: (user id, token)."""
        with self.db.transaction() as cur:
            user = accounts.create_user(cur, f"bench-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(12))
            return user.get_id(), accounts.create_token(cur, user.id, ["read", "publish"])

    def executions(self, owner: str, count: int, history: int, kind: str = "workflow", events: int = 0) -> list[str]:
        """``count`` new executions, each with the first ``history`` of ``events`` catalog events stored."""
        producer = Producer(self.db)
        ids = []
        for _ in range(count):
            exec_id = producer.create_execution(kind, "bench", owner)["exec_id"]
            if history:
                producer.append_events(exec_id, [wire.catalog_event(j, events) for j in range(1, history + 1)])
            ids.append(exec_id)
        return ids


class Server:
    """``gunicorn -c gunicorn.conf.py app:app`` on a free loopback port, one worker unless told; ready once
    /readyz answers 200 and every worker runs (``worker`` is the first)."""

    def __init__(self, pg: Postgres, tmp: Path, env: dict[str, str], args: Sequence[str] = (), workers: int = 1):
        with socket.socket() as s:
            s.bind((wire.HOST, 0))
            self.port = int(s.getsockname()[1])
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        metrics = tmp / f"metrics-{self.port}"
        metrics.mkdir()
        environ = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "STREAMAPP_ENV": "production",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            # One bench user holds every stream, for longer than the default lifetime.
            "STREAMAPP_MAX_STREAMS_PER_USER": "1000000",
            "STREAMAPP_STREAM_LIFETIME_S": "7200",
            **env,
        }
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "app:app",
            "--workers",
            str(workers),
            "--bind",
            f"{wire.HOST}:{self.port}",
            *args,
        ]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(workers)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, workers: int) -> None:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                running = tree(self.process.pid)[1:]
                if self.get("/readyz")[0] == 200 and len(running) == workers:
                    self.worker = running[0]
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready in {WAIT_S:.0f} s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(wire.HOST, self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """The unlabelled series of GET /metrics."""
        text = self.get("/metrics")[1].decode()
        return {name: float(value) for name, value in re.findall(r"^(\w+) (\S+)$", text, re.M)}

    def processes(self) -> list[psutil.Process]:
        return tree(self.process.pid)

    def rss(self) -> int:
        """Resident memory of the master and its worker (the master's is constant)."""
        return sum(proc.memory_info().rss for proc in self.processes())

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def errors(self) -> list[str]:
        """Log lines that report a failure: tracebacks, ERROR lines, 5xx answers (not /readyz starting up)."""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return [ln for ln in lines if "/readyz" not in ln and re.search(r'Traceback|\[ERROR\]|" 5\d\d ', ln)]
        return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        _reap(self.process, 30)


class Child:
    """``python -m bench.<module>``: one JSON object per line in (the config, then commands), one per line out."""

    def __init__(self, module: str, config: dict[str, t.Any], tmp: Path) -> None:
        self.stderr = tmp / f"{module}-{secrets.token_hex(3)}.log"
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"bench.{module}"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.send(config)

    def send(self, message: dict[str, t.Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = WAIT_S) -> dict[str, t.Any]:
        assert self.process.stdout is not None
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"bench.{self.stderr.stem} said nothing in {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench.{self.stderr.stem} ended:\n{self.stderr.read_text(errors='replace')[-2000:]}")
        return t.cast(dict[str, t.Any], json.loads(line))

    def ask(self, command: str, timeout: float = WAIT_S, **fields: t.Any) -> dict[str, t.Any]:
        self.send({"command": command, **fields})
        return self.receive(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()  # end of input: the child ends
        _reap(self.process, 10)


def _reap(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait for a process we asked to end; kill it after ``seconds``."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def cpu_seconds(processes: Sequence[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
    return out


class Cpu:
    """CPU seconds over a phase: the whole machine (busy, all cores), and named process trees.

    A process that starts inside the phase counts from zero; one that ends inside it
    is missed, so a tree's figure is a lower bound (the trees measured live throughout).
    """

    def __init__(self, **groups: Callable[[], list[psutil.Process]]) -> None:
        self.groups = groups
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> Cpu:
        self._start = {name: cpu_seconds(find()) for name, find in self.groups.items()}
        self._machine, self._wall = psutil.cpu_times(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        for name, find in self.groups.items():
            start = self._start[name]
            self.seconds[name] = sum(s - start.get(pid, 0.0) for pid, s in cpu_seconds(find()).items())
        self.wall = time.monotonic() - self._wall
        self.seconds["machine"] = _busy(psutil.cpu_times()) - _busy(self._machine)

    def row(self, *more: float) -> str:
        """``name s / … / more s …; machine busy s of wall × cores``: the CPU seconds of one phase."""
        parts = " / ".join(f"{s:.2f}" for s in [*(self.seconds[name] for name in self.groups), *more])
        cores = psutil.cpu_count() or 1
        return f"{parts}; machine {self.seconds['machine']:.2f} of {self.wall * cores:.1f}"


def _busy(times: t.Any) -> float:
    """Seconds all cores ran anything (guest time is inside user time; idle, iowait and steal are not busy)."""
    return float(sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq")))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


Measure = Callable[[argparse.Namespace, Postgres, Path, contextlib.ExitStack], str]


def profile_option(parser: argparse.ArgumentParser, during: str) -> None:
    """``--profile [FILE]``: py-spy the worker ``during`` a phase; its raw samples kept in FILE when given."""
    parser.add_argument(
        "--profile",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help=f"py-spy the worker {during}; raw samples kept in FILE when given",
    )


def run(module: str, parser: argparse.ArgumentParser, measure: Measure, argv: Sequence[str] | None = None) -> int:
    """Parse, measure with a fresh database and a temporary directory, print the table and its command.

    Everything started is stopped and removed at the end, on errors, Ctrl-C and SIGTERM too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    started = time.monotonic()

    def on_term(signum: int, frame: t.Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # The server and the load processes inherit it: each holds thousands of sockets.
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix=f"streamapp-{module}-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            pg = Postgres(stack)
            text = measure(args, pg, tmp, stack)
            python = os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable
            command = shlex.join(["PYTHONPATH=.", python, "-m", f"bench.{module}", *argv])
            git = subprocess.run(
                ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
            )
            print(
                f"{text}\n\ncommand: `{command}`\n\ncode {git.stdout.strip() or 'unknown'}; "
                f"PostgreSQL {pg.version}; nproc {os.cpu_count()}; {time.monotonic() - started:.0f} s",
                flush=True,
            )
    except KeyboardInterrupt:
        log("interrupted: everything started is stopped")
        return 130
    return 0
