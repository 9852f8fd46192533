"""``python -m streamapp follow`` as a process against a live gunicorn (SPEC §6; issue 9)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import typing as t

import pytest
import requests

from tests.conftest import ROOT
from tests.conftest import free_port
from tests.conftest import new_exec_id

pytestmark = pytest.mark.live

COMPLETE = ("complete", {"status": "SUCCESS", "output": "done"})


def _env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMAPP_TOKEN"}
    if token is not None:
        env["STREAMAPP_TOKEN"] = token
    return env


def _follow(*args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamapp", "follow", *args],
        cwd=ROOT,
        env=_env(token),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _url(server, exec_id: str, kind: str = "workflows") -> str:
    return server.api(f"/executions/{kind}/{exec_id}/stream")


def _append(producer, exec_id, *events):
    producer.append_events(exec_id, [{"type": t, "data": d} for t, d in events])


def _steps(producer, workflow) -> None:
    _append(
        producer,
        workflow,
        ("workflow_start", {"workflow_id": "w"}),
        ("workflow_status", {"status": "RUNNING"}),
        ("tool_call", {"tool_call_id": "c1", "tool_name": "search", "status": "SUCCESS", "duration_ms": 12}),
        COMPLETE,
    )


READABLE = (
    "#1 workflow_start w\n#2 workflow_status RUNNING\n#3 tool_call search SUCCESS 12 ms\n#4 complete SUCCESS done\n"
)


def test_complete_exits_0_with_readable_lines(server, account, workflow, producer):
    _steps(producer, workflow)
    done = _follow(_url(server, workflow), token=account.token)
    assert (done.returncode, done.stdout, done.stderr) == (0, READABLE, "")


def test_error_exits_1(server, account, workflow, producer):
    failed = {"status": "FAILED", "error": {"message": "boom\x1b[2J", "code": "tool_failed"}}
    _append(producer, workflow, ("workflow_status", {"status": "RUNNING"}), ("error", failed))
    done = _follow(_url(server, workflow), token=account.token)
    # Control characters from a producer are escaped, never sent to the terminal.
    expected = "#1 workflow_status RUNNING\n#2 error FAILED boom\\x1b[2J (tool_failed)\n"
    assert (done.returncode, done.stdout) == (1, expected)


def test_json_lines_parse(server, account, workflow, producer):
    _steps(producer, workflow)
    done = _follow("--json", _url(server, workflow), token=account.token)
    envelopes = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0
    assert [(e["id"], e["type"], e["exec_id"]) for e in envelopes] == [
        (1, "workflow_start", workflow),
        (2, "workflow_status", workflow),
        (3, "tool_call", workflow),
        (4, "complete", workflow),
    ]


def test_resume_and_filter(server, account, workflow, producer):
    _steps(producer, workflow)
    done = _follow("--last-event-id", "1", "--events", "tool_call", _url(server, workflow), token=account.token)
    assert (done.returncode, done.stdout) == (0, "#3 tool_call search SUCCESS 12 ms\n#4 complete SUCCESS done\n")


def test_already_finished_exits_0_with_nothing_to_print(server, account, workflow, producer):
    _steps(producer, workflow)
    done = _follow("--last-event-id", "4", _url(server, workflow), token=account.token)
    assert (done.returncode, done.stdout) == (0, "")


def test_token_from_a_file(server, account, workflow, producer, tmp_path):
    _steps(producer, workflow)
    token_file = tmp_path / "token"
    token_file.write_text(account.token + "\n")
    done = _follow("--token-file", str(token_file), _url(server, workflow))
    assert (done.returncode, done.stdout) == (0, READABLE)


class _Running:
    """A follower process whose stdout is read line by line, with a deadline."""

    def __init__(self, *args: str, token: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamapp", "follow", *args],
            cwd=ROOT,
            env=_env(token),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in t.cast(t.IO[str], self.process.stdout):
            self.lines.put(line)

    def line(self, deadline_s: float = 20) -> str:
        return self.lines.get(timeout=deadline_s)

    def finish(self, deadline_s: float = 30) -> tuple[int, str]:
        """The exit code and everything printed after the lines already read."""
        code = self.process.wait(deadline_s)
        self.reader.join(deadline_s)
        return code, "".join(list(self.lines.queue))


def test_text_chunks_print_as_a_console_log(server, account):
    def post(path: str, body: dict[str, t.Any]) -> str:
        r = requests.post(server.api(path), json=body, headers=account.headers, timeout=10)
        assert r.status_code in (201, 202), r.text
        return r.text

    exec_id = json.loads(post("/executions/agents", {"name": "a"}))["exec_id"]
    events = f"/executions/agents/{exec_id}/events"
    post(events, {"events": [{"type": "agent_status", "data": {"status": "RUNNING"}}]})
    follower = _Running(_url(server, exec_id, "agents"), token=account.token)
    try:
        # The first event is printed once the stream is subscribed, so chunks sent now reach it.
        assert follower.line() == "#1 agent_status RUNNING\n"
        post(f"/executions/agents/{exec_id}/chunks", {"chunks": ["Hello, ", "world\n", "line two"]})
        post(events, {"events": [{"type": "complete", "data": {"status": "SUCCESS"}}]})
        code, rest = follower.finish()
    finally:
        follower.process.kill()
        follower.process.wait()
    assert (code, rest) == (0, "Hello, world\nline two\n#2 complete SUCCESS\n")


@pytest.mark.parametrize("how", ["unknown", "not_mine", "no_token"])
def test_cannot_follow_exits_3(server, auth, account, workflow, how):
    url = _url(server, new_exec_id() if how == "unknown" else workflow)
    token = {"unknown": account.token, "not_mine": auth.user().token, "no_token": None}[how]
    done = _follow(url, token=token)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.startswith("streamapp: HTTP 401" if how == "no_token" else "streamapp: HTTP 404")


def test_unreachable_exits_3_after_max_wait():
    url = f"http://127.0.0.1:{free_port()}/api/v0/executions/workflows/x/stream"
    done = _follow("--max-wait", "1", "--last-event-id", "5", url)
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert lines[0].startswith("streamapp: reconnecting after ") and ", last id 5 " in lines[0]
    assert lines[-1].startswith("streamapp: no stream for ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--token", "sa_secret", "http://127.0.0.1:1/s"],
        ["--token=sa_secret", "http://127.0.0.1:1/s"],
        ["--events", "Bad-Name", "http://127.0.0.1:1/s"],
        ["--last-event-id", "-1", "http://127.0.0.1:1/s"],
        ["--max-wait", "soon", "http://127.0.0.1:1/s"],
        ["--token-file", "/nonexistent/token", "http://127.0.0.1:1/s"],
        ["not-a-url"],
    ],
)
def test_usage_errors_exit_2(args):
    done = _follow(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert "sa_secret" not in done.stderr


def test_a_token_argument_is_refused_with_a_pointer_to_the_right_way():
    done = _follow("--token", "sa_secret", "http://127.0.0.1:1/s")
    assert "STREAMAPP_TOKEN" in done.stderr and "--token-file" in done.stderr
