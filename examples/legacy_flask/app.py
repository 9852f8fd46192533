"""An ordinary Flask app with streamapp mounted in it: its own users, login and jobs.

It keeps its own tables (``shop_users``, ``reports``) in the same PostgreSQL
database as streamapp, logs users in with its own Flask-Login ``LoginManager``
and a form, and runs a "report" job whose every step updates the report row
and appends a progress event in ONE transaction. The report page follows the
job with ``streamapp.js`` through the app's own session cookie.

Run it (the embedded database under ./var/legacy-pg, or DATABASE_URL):

    PYTHONPATH=. .venv/bin/python examples/legacy_flask/app.py

Under gunicorn, as docs/integration.md shows, with DATABASE_URL and SECRET_KEY set:

    PYTHONPATH=. .venv/bin/gunicorn --chdir examples/legacy_flask -c gunicorn.conf.py app:app
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import threading
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import flask
import flask_login
import psycopg2
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from streamapp import StreamApp
from streamapp import append_events
from streamapp import create_execution
from streamapp import load_settings

HERE = Path(__file__).resolve().parent
DEMO_EMAIL = "alice@example.com"

SCHEMA = """
CREATE TABLE IF NOT EXISTS shop_users (
    id            serial PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    id         serial PRIMARY KEY,
    user_id    integer NOT NULL REFERENCES shop_users (id),
    state      text NOT NULL,
    exec_id    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

STEPS = ["load orders", "sum revenue", "charge fees", "render PDF"]


class User(flask_login.UserMixin):
    def __init__(self, user_id: int, email: str) -> None:
        self.id = user_id
        self.email = email


@contextlib.contextmanager
def transaction(database_url: str) -> Iterator[t.Any]:
    """One short transaction on a connection of the app's own (a legacy app's plain psycopg2)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def run_report(database_url: str, report_id: int, exec_id: str, step_s: float) -> None:
    """The job: each step changes the report row and appends its event in the same transaction."""
    with transaction(database_url) as cur:
        cur.execute("UPDATE reports SET state = 'running' WHERE id = %s", (report_id,))
        append_events(
            cur,
            exec_id,
            [
                {"type": "workflow_start", "data": {"workflow_id": "monthly-report"}},
                {"type": "workflow_status", "data": {"status": "RUNNING"}},
            ],
        )
    for number, step in enumerate(STEPS, 1):
        time.sleep(step_s)
        task = {"task_id": f"step-{number}"}
        if step == "charge fees":
            # The first attempt fails after appending: its transaction rolls back, so no stream
            # ever sees its event, and the next event takes the id it would have had.
            with contextlib.suppress(RuntimeError), transaction(database_url) as cur:
                append_events(
                    cur,
                    exec_id,
                    [{"type": "task_status", "data": {**task, "status": "FAILED", "reason": "rolled back"}}],
                )
                raise RuntimeError("the payment service timed out")
        with transaction(database_url) as cur:
            cur.execute("UPDATE reports SET state = %s WHERE id = %s", (f"step {number}: {step}", report_id))
            append_events(
                cur,
                exec_id,
                [
                    {"type": "task_status", "data": {**task, "status": "RUNNING"}},
                    {
                        "type": "tool_call",
                        "data": {
                            "tool_call_id": f"call-{number}",
                            "tool_name": step,
                            "status": "SUCCESS",
                            "duration_ms": int(step_s * 1000),
                        },
                    },
                    {"type": "task_status", "data": {**task, "status": "SUCCESS"}},
                ],
            )
    with transaction(database_url) as cur:
        cur.execute("UPDATE reports SET state = 'done' WHERE id = %s", (report_id,))
        append_events(
            cur, exec_id, [{"type": "complete", "data": {"status": "SUCCESS", "output": {"report_id": report_id}}}]
        )


def create_app(database_url: str, secret_key: str, step_s: float = 1.0) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = secret_key
    # Lax keeps other sites' forms from posting with the session (these forms carry no CSRF token).
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    login_manager = flask_login.LoginManager(app)
    login_manager.login_view = "login"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        with transaction(database_url) as cur:
            cur.execute("SELECT id, email FROM shop_users WHERE id = %s", (int(user_id),))
            row = cur.fetchone()
        return User(*row) if row else None

    # Mounted after the host's LoginManager, so streams use the host's users and cookie.
    StreamApp(app, settings=load_settings(database_url=database_url, secret_key=secret_key), url_prefix="/progress")

    @app.get("/")
    def home() -> str:
        return flask.render_template("home.html")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> t.Any:
        if flask.request.method == "GET":
            return flask.render_template("login.html")
        form = flask.request.form
        with transaction(database_url) as cur:
            cur.execute("SELECT id, email, password_hash FROM shop_users WHERE email = %s", (form.get("email"),))
            row = cur.fetchone()
        if row is None or not check_password_hash(row[2], form.get("password", "")):
            return flask.render_template("login.html", error="Wrong email or password."), 401
        flask_login.login_user(User(row[0], row[1]))
        return flask.redirect(flask.url_for("home"))

    @app.post("/reports")
    @flask_login.login_required
    def start_report() -> t.Any:
        user = flask_login.current_user
        with transaction(database_url) as cur:
            # The report row and its execution are created together, or neither is.
            execution = create_execution(cur, "workflow", "monthly-report", str(user.id))
            cur.execute(
                "INSERT INTO reports (user_id, state, exec_id) VALUES (%s, 'queued', %s) RETURNING id",
                (user.id, execution["exec_id"]),
            )
            report_id = cur.fetchone()[0]
        # A job queue would pick this up; a thread keeps the example self-contained.
        threading.Thread(
            target=run_report, args=(database_url, report_id, execution["exec_id"], step_s), daemon=True
        ).start()
        return flask.redirect(flask.url_for("report", report_id=report_id))

    @app.get("/reports/<int:report_id>")
    @flask_login.login_required
    def report(report_id: int) -> t.Any:
        with transaction(database_url) as cur:
            cur.execute(
                "SELECT exec_id, state FROM reports WHERE id = %s AND user_id = %s",
                (report_id, flask_login.current_user.id),
            )
            row = cur.fetchone()
        if row is None:
            flask.abort(404)
        return flask.render_template("report.html", report_id=report_id, exec_id=row[0], state=row[1])

    return app


def prepare_database(database_url: str) -> str | None:
    """streamapp's migrations, this app's tables, and a demo user; the demo password when new."""
    from streamapp import migrate
    from streamapp.db import Database

    db = Database(database_url, 1)
    try:
        migrate.upgrade(db)
    finally:
        db.close()
    with transaction(database_url) as cur:
        # Two servers of this app (pages and streams, docs/integration.md) may start at once.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('legacy_flask schema'))")
        cur.execute(SCHEMA)
        password = secrets.token_urlsafe(9)
        cur.execute(
            "INSERT INTO shop_users (email, password_hash) VALUES (%s, %s) ON CONFLICT (email) DO NOTHING RETURNING id",
            (DEMO_EMAIL, generate_password_hash(password)),
        )
        return password if cur.fetchone() else None


def _from_environment() -> flask.Flask:
    database_url, secret_key = os.environ["DATABASE_URL"], os.environ["SECRET_KEY"]
    prepare_database(database_url)
    return create_app(database_url, secret_key, float(os.environ.get("REPORT_STEP_S", "1")))


def main() -> None:
    from gunicorn.app.base import BaseApplication

    from streamapp import embedded

    parser = argparse.ArgumentParser(description="The legacy Flask example, with streamapp mounted.")
    parser.add_argument("--port", type=int, default=5000)
    port = parser.parse_args().port
    var = Path("var")
    database_url = os.environ.get("DATABASE_URL") or embedded.start(var / "legacy-pg")
    password = prepare_database(database_url)
    if password:
        print(f"log in as {DEMO_EMAIL} with password {password}", flush=True)
    os.environ.update(DATABASE_URL=database_url, SECRET_KEY=os.environ.get("SECRET_KEY") or embedded.secret_key(var))

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"127.0.0.1:{port}")
            self.cfg.set("worker_class", "gevent")
            self.cfg.set("workers", 1)
            self.cfg.set("post_fork", _patch_psycopg)

        def load(self) -> flask.Flask:
            return _from_environment()

    print(f"open http://127.0.0.1:{port}/ in a browser", flush=True)
    Server().run()


def _patch_psycopg(server: t.Any, worker: t.Any) -> None:
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


if __name__ == "__main__":
    main()
else:
    app = _from_environment()
