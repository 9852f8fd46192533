"""streamapp's entry point.

* ``gunicorn -c gunicorn.conf.py app:app`` — production (``DATABASE_URL`` set).
* ``python app.py [--host H] [--port P]`` — development: without
  ``DATABASE_URL`` it starts an embedded PostgreSQL under ``./var/``, migrates
  it, creates a development user on a fresh ``./var/`` and prints its token
  once, then serves through gunicorn's gevent worker on 127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import atexit
import os
import runpy
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import psycopg2
from flask import Flask
from gunicorn.app.base import BaseApplication

from streamapp import create_app
from streamapp import migrate
from streamapp.config import ConfigError
from streamapp.config import Settings
from streamapp.config import load_settings
from streamapp.embedded import EmbeddedError
from streamapp.errors import DatabaseUnavailable
from streamapp.state import current_state

HERE = Path(__file__).resolve().parent
DEV_EMAIL = "dev@streamapp.local"
BOOT_ERROR = 3


def _share_metrics(metrics_dir: str | None) -> None:
    """Make the directory where every worker writes its metrics, unless one is given (SPEC §9).

    prometheus-client chooses between in-process values and per-process files
    when it is first imported, and building the app imports it. Here the app is
    built in gunicorn's master before gunicorn.conf.py's ``on_starting`` runs, so
    the directory is made first; the worker forked from this master then writes
    files /metrics sums, as under ``gunicorn -c gunicorn.conf.py`` (issue 13).
    """
    if metrics_dir:
        return
    made = tempfile.mkdtemp(prefix="streamapp-metrics-")
    # prometheus-client's own variable, read by it and by load_settings() below.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    master = os.getpid()

    def remove() -> None:
        # Workers are forked from this process and exit through its atexit too: only the master removes it.
        if os.getpid() == master:
            shutil.rmtree(made, ignore_errors=True)

    atexit.register(remove)


def _settings(development: bool) -> Settings:
    from_env = load_settings(check=False)
    if from_env.database_url and not development:
        return load_settings()
    if development:
        _share_metrics(from_env.metrics_dir)
    # `python app.py`, or no DATABASE_URL: development (SPEC §9), with a SECRET_KEY kept under ./var/.
    from streamapp import embedded

    var_dir = Path(from_env.var_dir).resolve()
    defaults = {"env": "development", "secret_key": embedded.secret_key(var_dir)}
    if from_env.database_url:
        return load_settings(defaults=defaults)
    return load_settings(defaults=defaults, database_url=embedded.start(var_dir))


def _build(development: bool) -> Flask:
    try:
        return create_app(_settings(development))
    except (ConfigError, EmbeddedError, OSError) as exc:
        print(f"streamapp: {exc}", file=sys.stderr, flush=True)
        # 3 is gunicorn's "worker failed to boot": its master stops instead of
        # restarting a worker that can never start.
        sys.exit(BOOT_ERROR)


app = _build(development=__name__ == "__main__")


def _create_dev_user() -> None:
    from streamapp import accounts

    with current_state().db.transaction() as cur:
        cur.execute("SELECT count(*) FROM users")
        if cur.fetchone()[0]:
            return
        password = secrets.token_urlsafe(12)
        user = accounts.create_user(cur, DEV_EMAIL, password, admin=True)
        token = accounts.create_token(cur, user.id, ["read", "publish"])
    print(f"development user: {DEV_EMAIL} password {password}", flush=True)
    print(f"development token: {token}", flush=True)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn with gunicorn.conf.py, serving the app built above."""

    def __init__(self, bind: str) -> None:
        self.bind = bind
        super().__init__()

    def load_config(self) -> None:
        for key, value in runpy.run_path(str(HERE / "gunicorn.conf.py")).items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        self.cfg.set("bind", self.bind)
        # A developer watches requests go by; production leaves it to the proxy (gunicorn.conf.py).
        self.cfg.set("accesslog", "-")
        self.cfg.set("workers", 1)

    def load(self) -> Flask:
        return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run streamapp for development.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with app.app_context():
        state = current_state()
        try:
            for name in migrate.upgrade(state.db):
                print(f"applied migration {name}", flush=True)
            _create_dev_user()
        except (psycopg2.OperationalError, DatabaseUnavailable) as exc:
            sys.exit(f"streamapp: cannot reach the database: {str(exc.__cause__ or exc).strip()}")
    # Connections opened here must not be shared with the forked worker.
    state.db.close()
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    print(f"open http://{args.host}:{args.port}/ in a browser for the demo", flush=True)
    _Gunicorn(f"{args.host}:{args.port}").run()


if __name__ == "__main__":
    main()
