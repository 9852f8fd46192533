"""Fixtures: a real PostgreSQL, the app, a live gunicorn, users and tokens.

``DATABASE_URL`` points the suite at a server of your own (a database per
xdist worker is created in it and dropped at the end); without it an
embedded PostgreSQL is started under ``var/test-pg``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import flask
import flask_login
import gevent
import hypothesis
import psutil
import psycopg2
import psycopg2.extensions
import pytest
import requests

from streamapp import StreamApp
from streamapp import accounts
from streamapp import create_app
from streamapp import migrate
from streamapp.config import Settings
from streamapp.db import Database
from streamapp.producer import Producer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-" + "x" * 32

# Property tests stay modest so the suite stays fast; in CI (CI=true) they draw the same
# examples on every run, so a red build is reproducible and never a roll of the dice.
hypothesis.settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis.settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


def _admin_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from streamapp import embedded

    return embedded.start(ROOT / "var" / "test-pg")


def _with_database(url: str, name: str) -> str:
    dsn = psycopg2.extensions.parse_dsn(url)
    dsn["dbname"] = name
    return psycopg2.extensions.make_dsn(**dsn)


@pytest.fixture(scope="session")
def database(worker_id: str) -> t.Iterator[str]:
    """A fresh, migrated database for this xdist worker; its URL."""
    admin_url = _admin_url()
    # The pid keeps two suites on one server (two checkouts, two terminals) apart.
    name = f"streamapp_tests_{worker_id}_{os.getpid()}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_url, name)
    db = Database(url, 2)
    migrate.upgrade(db)
    db.close()
    yield url
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


@pytest.fixture(scope="session")
def settings(database: str) -> Settings:
    return Settings(database_url=database, secret_key=SECRET, env="development", pool_size=4)


@pytest.fixture(scope="session")
def db(settings: Settings) -> t.Iterator[Database]:
    database = Database(t.cast(str, settings.database_url), 4)
    yield database
    database.close()


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["streamapp"].close()


@pytest.fixture
def make_client(settings: Settings):  # type: ignore[no-untyped-def]
    """Test clients of apps built with changed settings; their pools are closed at the end."""
    apps = []

    def make(**changes):  # type: ignore[no-untyped-def]
        app = create_app(settings.replace(**changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["streamapp"].close()


@pytest.fixture
def empty_database(database: str) -> t.Iterator[str]:
    """A database with no tables, dropped at the end; its URL."""
    name = f"streamapp_empty_{secrets.token_hex(4)}"
    admin = psycopg2.connect(database)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(database, name)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def runner(app):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


@dataclasses.dataclass
class Account:
    user: accounts.User
    email: str
    password: str
    token: str  # read + publish

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class AuthActions:
    """Makes users and tokens through the real accounts module."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def user(self, *, admin: bool = False) -> Account:
        email = f"u{secrets.token_hex(6)}@example.com"
        password = secrets.token_urlsafe(12)
        with self.db.transaction() as cur:
            user = accounts.create_user(cur, email, password, admin=admin)
            token = accounts.create_token(cur, user.id, ["read", "publish"])
        return Account(user, email, password, token)

    def token(self, account: Account, scopes: t.Iterable[str]) -> str:
        with self.db.transaction() as cur:
            return accounts.create_token(cur, account.user.id, scopes)

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def auth(db: Database) -> AuthActions:
    return AuthActions(db)


@pytest.fixture(scope="session")
def producer(db: Database) -> Producer:
    return Producer(db)


@pytest.fixture
def scratch() -> t.Iterator[Path]:
    """A fresh directory for an embedded PostgreSQL of a test's own.

    Not under pytest's tmp_path: pytest keeps /tmp/pytest-of-<user> at mode
    0700, and as root the embedded server runs as another user who must be
    able to reach its data directory.
    """
    path = ROOT / "var" / "scratch" / secrets.token_hex(6)
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(predicate: t.Callable[[], bool], deadline_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``deadline_s``.

    It sleeps with gevent, so greenlets of an app running in this process (a hub's listener)
    make progress meanwhile; in a process without them it is a plain sleep.
    """
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached in {deadline_s} s")
        gevent.sleep(0.05)


@dataclasses.dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str) -> str:
        return f"{self.url}/api/v0{path}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def workers_holding_streams(self) -> int:
        """How many of its workers hold an open client connection (the kernel picks the worker)."""
        return sum(
            any(c.laddr and c.laddr.port == self.port and c.status == "ESTABLISHED" for c in w.net_connections())
            for w in psutil.Process(self.process.pid).children()
        )


@contextlib.contextmanager
def live_server(
    database: str, tmp: Path, env: dict[str, str] | None = None, workers: int = 1
) -> t.Iterator[LiveServer]:
    """``gunicorn -c gunicorn.conf.py app:app`` on a free port, ready once /readyz answers."""
    port = free_port()
    log = tmp / f"gunicorn-{port}.log"
    environ = {
        **os.environ,
        "DATABASE_URL": database,
        "SECRET_KEY": SECRET,
        "STREAMAPP_ENV": "development",
        "STREAMAPP_POOL_SIZE": "4",
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--graceful-timeout",
        "5",
        # Off by default (gunicorn.conf.py); on here, where tests read it.
        "--access-logfile",
        "-",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        _wait_accepting(server, workers)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: LiveServer, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{server.log_text()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn not ready in {deadline_s} s:\n{server.log_text()}")


def _wait_accepting(server: LiveServer, workers: int, deadline_s: float = 30.0) -> None:
    """Until every worker accepts connections: /readyz answered from one, another may still be loading
    the app, and a test that needs streams on each would see every one of them go to the first."""
    if workers < 2:
        return
    end = time.monotonic() + deadline_s
    while True:
        # One connection at a time, held open: the idle workers race to accept each.
        held = []
        try:
            for _ in range(4 * workers):
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
                time.sleep(0.02)
                if server.workers_holding_streams() >= workers:
                    return
        finally:
            for sock in held:
                sock.close()
        if time.monotonic() > end:
            raise RuntimeError(f"not all {workers} gunicorn workers accept in {deadline_s} s:\n{server.log_text()}")
        time.sleep(0.1)


# The shared live server's settings (the `server` fixture of tests/live/conftest.py).
SHARED_SERVER_ENV = {"STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_POLL_MS": "250"}


@pytest.fixture
def account(auth: AuthActions) -> Account:
    return auth.user()


def new_exec_id() -> str:
    return "t-" + secrets.token_hex(8)


@pytest.fixture
def workflow(producer: Producer, account: Account) -> str:
    """A new workflow execution owned by ``account``; its id."""
    return t.cast(str, producer.create_execution("workflow", "wf", account.user.get_id())["exec_id"])


class HostUser(flask_login.UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def host_app() -> flask.Flask:
    """A host Flask app with its own ``LoginManager``: a request is whoever its ``X-User`` header names."""
    app = flask.Flask("host")
    app.secret_key = "host-secret-" + "x" * 20
    manager = flask_login.LoginManager(app)
    manager.request_loader(lambda req: HostUser(req.headers["X-User"]) if "X-User" in req.headers else None)
    return app


@pytest.fixture
def public_host(settings: Settings) -> t.Iterator[flask.Flask]:
    """A host app whose hook lets anyone read executions named public-* (a rule the database cannot
    know), one stream per user, under /p."""
    app = host_app()

    def authorize(user: t.Any, execution: t.Any) -> bool:
        return bool(execution["owner_id"] == user.get_id() or execution["name"].startswith("public-"))

    StreamApp(settings=settings.replace(max_streams_per_user=1), url_prefix="/p", authorize=authorize).init_app(app)
    yield app
    app.extensions["streamapp"].close()
