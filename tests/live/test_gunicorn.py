"""What only a real gunicorn shows: chunked request bodies and a configuration that cannot boot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ROOT
from tests.conftest import SECRET
from tests.conftest import free_port

pytestmark = pytest.mark.live


def test_chunked_body_over_the_limit_is_413_and_stores_nothing(server, account, workflow, db):
    """A body without Content-Length meets the same limit; it is never cut off and parsed (issue 3)."""
    events = [{"type": "warning", "data": {"code": "x", "message": "y" * 200_000}} for _ in range(25)]
    body = json.dumps({"events": events}).encode()  # ~5 MB, over the 4 MiB default

    def pieces():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    r = requests.post(
        server.api(f"/executions/workflows/{workflow}/events"),
        data=pieces(),  # a generator: requests sends Transfer-Encoding: chunked
        headers={**account.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_large"
    with db.transaction() as cur:
        cur.execute("SELECT count(*) FROM events WHERE exec_id = %s", (workflow,))
        assert cur.fetchone()[0] == 0


def test_chunked_body_under_the_limit_is_accepted(server, account, workflow):
    body = json.dumps({"events": [{"type": "warning", "data": {"code": "x", "message": "fine"}}]}).encode()
    r = requests.post(
        server.api(f"/executions/workflows/{workflow}/events"),
        data=iter([body[:10], body[10:]]),
        headers={**account.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def test_bad_configuration_stops_gunicorn_with_a_message(database, tmp_path):
    """SPEC §9: an invalid value stops start-up; the master must not restart workers forever."""
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "SECRET_KEY": SECRET,
        "STREAMAPP_POLL_MS": "5",
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "app:app",
        "--bind",
        f"127.0.0.1:{free_port()}",
        "--workers",
        "1",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "STREAMAPP_POLL_MS" in result.stderr
    assert result.stderr.count("STREAMAPP_POLL_MS") == 1  # one worker tried, not a restart loop
    assert "Traceback" not in result.stderr
