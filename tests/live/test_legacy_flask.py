"""examples/legacy_flask, served as docs/integration.md says (issue 12).

The example is an ordinary Flask app with streamapp mounted under /progress:
its own users and login form, a job whose every step commits the app's row
and its progress event in one transaction (one attempt rolled back), and a
page that follows it. It runs under gunicorn's gevent worker, and in the
split set-up: the same app under the sync worker for pages and under gevent
for streams, behind nginx with the guide's own snippet.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import psycopg2
import pytest
import requests
from werkzeug.security import generate_password_hash

from tests.conftest import ROOT
from tests.conftest import SECRET
from tests.conftest import free_port
from tests.live.nginx import running
from tests.sse import Frame
from tests.sse import Stream

pytestmark = pytest.mark.live

EXAMPLE = ROOT / "examples" / "legacy_flask"
WARNING = "streamapp is served by gunicorn's sync worker"
STEPS = 4


@contextlib.contextmanager
def example_server(database: str, tmp: Path, worker: str, step_s: float = 0.3) -> t.Iterator[tuple[str, Path]]:
    """The example under gunicorn with its own gunicorn.conf.py and ``-k worker``; (URL, log)."""
    port = free_port()
    log = tmp / f"legacy-{worker}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "DATABASE_URL", "SECRET_KEY"))}
    env.update(DATABASE_URL=database, SECRET_KEY=SECRET, PYTHONPATH=str(ROOT), REPORT_STEP_S=str(step_s))
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(EXAMPLE),
        "-c",
        "gunicorn.conf.py",
        "-k",
        worker,
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        "app:app",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the example did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, log
    finally:
        process.terminate()
        process.wait(15)


def _host_user(database: str) -> tuple[str, str]:
    """A user of the example's own table; (email, password)."""
    email, password = f"h{secrets.token_hex(5)}@example.com", secrets.token_urlsafe(10)
    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO shop_users (email, password_hash) VALUES (%s, %s)", (email, generate_password_hash(password))
        )
    conn.close()
    return email, password


def _login(base: str, database: str) -> requests.Session:
    email, password = _host_user(database)
    session = requests.Session()
    r = session.post(base + "/login", data={"email": email, "password": password}, timeout=10)
    assert r.status_code == 200 and "Logged in as" in r.text, r.text
    return session


def _start_report(base: str, session: requests.Session, database: str) -> str:
    """Start a report through the app's own form; the exec id its row points to."""
    r = session.post(base + "/reports", timeout=10, allow_redirects=False)
    assert r.status_code == 302, r.text
    report_id = int(r.headers["Location"].rsplit("/", 1)[1])
    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT exec_id FROM reports WHERE id = %s", (report_id,))
        exec_id = t.cast(str, cur.fetchone()[0])
    conn.close()
    page = session.get(f"{base}/reports/{report_id}", timeout=10)
    assert page.status_code == 200 and f"/progress/executions/workflows/{exec_id}/stream" in page.text
    return exec_id


def _cookie(session: requests.Session) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{c.name}={c.value}" for c in session.cookies)}


def _stream_url(base: str, exec_id: str) -> str:
    return f"{base}/progress/executions/workflows/{exec_id}/stream"


def _follow(base: str, exec_id: str, session: requests.Session) -> list[Frame]:
    with Stream(_stream_url(base, exec_id), _cookie(session)) as stream:
        return stream.frames_until(lambda f: f.event in ("complete", "error"), deadline_s=30)


def _check_report(frames: list[Frame]) -> None:
    """Every committed step once, in order; the rolled-back attempt never."""
    assert [int(f.id) for f in frames] == list(range(1, len(frames) + 1))
    assert [f.event for f in frames] == (
        ["workflow_start", "workflow_status"] + ["task_status", "tool_call", "task_status"] * STEPS + ["complete"]
    )
    assert all("rolled back" not in f.data for f in frames)


def test_extension_under_gevent_follows_a_job_made_in_host_transactions(database, tmp_path):
    with example_server(database, tmp_path, "gevent") as (base, log):
        session = _login(base, database)
        exec_id = _start_report(base, session, database)
        _check_report(_follow(base, exec_id, session))
        stranger = _login(base, database)
        r = requests.get(_stream_url(base, exec_id), headers=_cookie(stranger), timeout=10)
        unknown = requests.get(_stream_url(base, "no-such-execution"), headers=_cookie(stranger), timeout=10)
        assert r.status_code == unknown.status_code == 404 and r.content == unknown.content
        assert requests.get(_stream_url(base, exec_id), timeout=10).status_code == 401
    assert WARNING not in log.read_text()


def _guide_nginx(pages: str, streams: str, port: int) -> str:
    """The nginx block of docs/integration.md, with only its three addresses replaced."""
    text = (ROOT / "docs" / "integration.md").read_text()
    block = re.search(r"```nginx\n(.*?)```", text, re.S)
    assert block, "docs/integration.md lost its nginx block"
    conf = re.sub(r"(?m)^ {3}", "", block.group(1))
    conf, n = re.subn(r"server 127\.0\.0\.1:5001;", f"server {pages};", conf)
    conf, m = re.subn(r"server 127\.0\.0\.1:5002;", f"server {streams};", conf)
    conf, k = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", conf)
    assert (n, m, k) == (1, 1, 1), "the guide's nginx block changed shape: update this test"
    return conf


def test_split_set_up_keeps_pages_fast_while_streams_are_open(database, tmp_path):
    streams_open = 12
    # Reports take over 4 s, so the streams are still open while the pages are asked for.
    with (
        example_server(database, tmp_path, "sync", step_s=1) as (pages, pages_log),
        example_server(database, tmp_path, "gevent", step_s=1) as (streams, _),
    ):
        render = lambda port: _guide_nginx(pages.removeprefix("http://"), streams.removeprefix("http://"), port)  # noqa: E731
        with running(render, tmp_path / "nginx", ready_path="/") as base:
            session = _login(base, database)  # the cookie the sync server set ...
            exec_ids = [_start_report(base, session, database) for _ in range(3)]
            with concurrent.futures.ThreadPoolExecutor(streams_open) as pool:
                followers = [pool.submit(_follow, base, exec_ids[n % 3], session) for n in range(streams_open)]
                # ... authorizes streams on the gevent server, and pages stay answered meanwhile
                # by the one sync worker, which would otherwise be held by the first stream.
                for _ in range(5):
                    assert requests.get(base + "/", timeout=5).status_code == 200
                    assert not all(f.done() for f in followers), "the streams ended before the page was asked"
                for follower in followers:
                    _check_report(follower.result(timeout=60))
    assert WARNING in pages_log.read_text()


def test_the_report_page_follows_the_job_in_a_browser(database, tmp_path, page):
    with example_server(database, tmp_path, "gevent") as (base, _):
        email, password = _host_user(database)
        page.goto(base + "/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button")
        page.click("text=Generate this month's report")
        # The page's own session cookie authorizes the stream; streamapp.js shows each step.
        page.wait_for_function("document.getElementById('status').textContent === 'SUCCESS'", timeout=30_000)
        steps = page.locator("#steps li").all_inner_texts()
        assert steps == [f"{step}: SUCCESS" for step in ("load orders", "sum revenue", "charge fees", "render PDF")]
        assert page.inner_text("#connection") == "closed"
        page.screenshot(path=str(ROOT / "var" / "artifacts" / "legacy-report.png"), full_page=True)
