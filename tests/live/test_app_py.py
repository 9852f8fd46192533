"""``python app.py`` on a fresh ``./var/``: embedded PostgreSQL, migrations, token, a stream."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.conftest import free_port
from tests.sse import Stream

pytestmark = pytest.mark.live


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SECRET_KEY", "STREAMAPP_"))}
    return env


@contextlib.contextmanager
def _run_app(cwd: Path, port: int, env: dict[str, str] | None = None):
    log = cwd / "app.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(port)],
            cwd=cwd,
            env={**_env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, log
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(log: Path, pattern: str, process: subprocess.Popen, deadline_s: float = 60) -> re.Match:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        match = re.search(pattern, log.read_text(errors="replace"), re.M)
        if match:
            return match
        if process.poll() is not None:
            raise AssertionError(f"app.py exited {process.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not seen in time:\n{log.read_text()}")


def _wait_ready(port: int, log: Path, deadline_s: float = 30) -> None:
    """Until the served app answers /readyz with 200; its log if it never does."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered 200:\n{log.read_text()}")


def test_fresh_var_serves_a_stream(scratch: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v0"
    with _run_app(scratch, port) as (process, log):
        token = _wait_for(log, r"^development token: (\S+)$", process).group(1)
        _wait_ready(port, log)
        headers = {"Authorization": f"Bearer {token}"}
        created = requests.post(f"{base}/executions/workflows", json={"name": "demo"}, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        stream_url = f"http://127.0.0.1:{port}{created.json()['stream_url']}"
        with Stream(stream_url, headers) as stream:
            assert stream.next_item().retry == 3000
            appended = requests.post(
                f"{base}/executions/workflows/{created.json()['exec_id']}/events",
                json={"events": [{"type": "complete", "data": {"status": "SUCCESS"}}]},
                headers=headers,
                timeout=10,
            )
            assert appended.status_code == 201
            assert stream.next_frame().event == "complete"
    assert (scratch / "var" / "pgdata" / "PG_VERSION").exists()
    assert (scratch / "var" / "secret_key").exists()
    # A second start reuses ./var/ and prints no new token.
    port = free_port()
    with _run_app(scratch, port) as (process, log):
        _wait_for(log, r"serving on", process)
        assert "development token:" not in log.read_text()


def _refused(cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run app.py where it must refuse to start; its stderr, which must carry no traceback."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


def test_half_initialised_var_gives_a_clear_message(tmp_path: Path):
    pgdata = tmp_path / "var" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "leftover").write_text("x")
    stderr = _refused(tmp_path)
    assert "half-initialised" in stderr and "remove" in stderr


def test_pgdata_that_is_a_file_gives_a_clear_message(tmp_path: Path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "pgdata").write_text("not a directory")
    stderr = _refused(tmp_path)
    assert "not a directory" in stderr and "remove" in stderr


def test_unreachable_database_gives_a_clear_message(tmp_path: Path):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    assert "cannot reach the database" in _refused(tmp_path, {"DATABASE_URL": url})


def test_app_py_on_your_own_database_is_development_too(tmp_path: Path, database: str):
    """SPEC §9: `python app.py` runs with STREAMAPP_ENV=development and a SECRET_KEY kept under ./var/."""
    port = free_port()
    with _run_app(tmp_path, port, {"DATABASE_URL": database}) as (process, log):
        _wait_for(log, r"serving on", process)
        _wait_ready(port, log)
    assert (tmp_path / "var" / "secret_key").exists()
    assert not (tmp_path / "var" / "pgdata").exists()
