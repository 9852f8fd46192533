"""examples/node/follow.js against a live gunicorn (SPEC §5, §6 Node; issue 9).

The example is installed with ``npm ci`` from its committed lock file into a
copy of ``examples/node`` (package.json, package-lock.json, follow.js): under
``pytest -n`` the docs test runs ``npm ci`` in ``examples/node`` itself, and an
``npm ci`` there from this module too could delete its ``node_modules`` under a
running ``node``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import live_server
from tests.conftest import new_exec_id

pytestmark = pytest.mark.live

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
FILES = ["package.json", "package-lock.json", "follow.js"]
DEADLINE_S = 60.0
EVENT_LINE = re.compile(r"^#(\d+) ")
COMPLETE = {"type": "complete", "data": {"status": "SUCCESS", "output": {"rows": 3}}}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/node with its locked dependencies installed by ``npm ci``."""
    missing = [tool for tool in ("node", "npm") if not shutil.which(tool)]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{' and '.join(missing)} not installed; .ci/run installs them (nodejs, npm)")
        pytest.skip(f"{' and '.join(missing)} not installed")
    folder = tmp_path_factory.mktemp("node-example")
    for name in FILES:
        shutil.copy(EXAMPLE / name, folder / name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return folder


@dataclasses.dataclass
class Follower:
    """``node follow.js`` running; its stdout and stderr lines read with a deadline."""

    process: subprocess.Popen[str]
    lines: queue.Queue[tuple[str, str | None]] = dataclasses.field(default_factory=queue.Queue)
    out: list[str] = dataclasses.field(default_factory=list)
    err: list[str] = dataclasses.field(default_factory=list)
    open_pipes: int = 2

    def __post_init__(self) -> None:
        for name, pipe in (("out", self.process.stdout), ("err", self.process.stderr)):
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True).start()

    def _pump(self, name: str, pipe: t.IO[str]) -> None:
        for line in pipe:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))

    def _next(self, end: float) -> bool:
        """Take one line into ``out``/``err``; False once both pipes are closed."""
        if self.open_pipes == 0:
            return False
        try:
            name, line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no output in time:\n{self.transcript()}") from None
        if line is None:
            self.open_pipes -= 1
        else:
            (self.out if name == "out" else self.err).append(line)
        return True

    def wait_for(self, text: str, deadline_s: float = DEADLINE_S) -> None:
        """Read until a stdout line contains ``text``."""
        end = time.monotonic() + deadline_s
        while not any(text in line for line in self.out):
            if not self._next(end):
                raise AssertionError(f"{text!r} never printed:\n{self.transcript()}")

    def finish(self, deadline_s: float = DEADLINE_S) -> int:
        """Read to the end of output; the exit code."""
        end = time.monotonic() + deadline_s
        while self._next(end):
            pass
        return self.process.wait(max(0.0, end - time.monotonic()))

    def ids(self) -> list[int]:
        return [int(m.group(1)) for line in self.out if (m := EVENT_LINE.match(line))]

    def transcript(self) -> str:
        return "--- stdout ---\n" + "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)


@pytest.fixture
def follow(example: Path) -> t.Iterator[t.Callable[..., Follower]]:
    """Start ``node follow.js ARGS`` with ``STREAMAPP_TOKEN``; killed at the end if still running."""
    started: list[Follower] = []

    def start(*args: str, token: str | None) -> Follower:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPP_")}
        if token is not None:
            env["STREAMAPP_TOKEN"] = token
        process = subprocess.Popen(
            ["node", "follow.js", *args],
            cwd=example,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(Follower(process))
        return started[-1]

    yield start
    for follower in started:
        if follower.process.poll() is None:
            follower.process.kill()
            follower.process.wait()


def _url(server: t.Any, exec_id: str, kind: str = "workflows") -> str:
    return t.cast(str, server.api(f"/executions/{kind}/{exec_id}/stream"))


def _status(value: str) -> dict[str, t.Any]:
    return {"type": "workflow_status", "data": {"status": value}}


def test_live_events_each_id_once_in_order_then_exit_0(server, account, workflow, producer, follow):
    producer.append_events(workflow, [{"type": "workflow_start", "data": {"workflow_id": "w"}}, _status("RUNNING")])
    follower = follow(_url(server, workflow), token=account.token)
    follower.wait_for("#2 workflow_status RUNNING")
    tool = {"tool_call_id": "c1", "tool_name": "search", "status": "SUCCESS"}
    producer.append_events(workflow, [{"type": "tool_call", "data": tool}])
    follower.wait_for("#3 tool_call search SUCCESS")
    producer.append_events(workflow, [_status("PAUSED"), _status("RUNNING"), COMPLETE])
    assert follower.finish() == 0, follower.transcript()
    assert follower.ids() == [1, 2, 3, 4, 5, 6]
    assert follower.out[-1] == '#6 complete SUCCESS {"rows":3}'


def test_catalog_error_exits_1(server, account, workflow, producer, follow):
    failure = {"status": "FAILED", "error": {"message": "disk full", "code": "io"}}
    producer.append_events(workflow, [_status("RUNNING"), {"type": "error", "data": failure}])
    follower = follow(_url(server, workflow), token=account.token)
    assert follower.finish() == 1, follower.transcript()
    assert follower.out == ["#1 workflow_status RUNNING", "#2 error FAILED disk full (io)"]


def test_last_event_id_resumes_after_that_event(server, account, workflow, producer, follow):
    producer.append_events(workflow, [_status("RUNNING")] * 5 + [COMPLETE])
    follower = follow(_url(server, workflow), "--last-event-id", "3", token=account.token)
    assert follower.finish() == 0, follower.transcript()
    assert follower.ids() == [4, 5, 6]


def test_cursor_ahead_of_the_table_resets_and_replays_from_the_start(server, account, workflow, producer, follow):
    producer.append_events(workflow, [_status("RUNNING"), _status("PAUSED")])
    follower = follow(_url(server, workflow), "--last-event-id", "9", token=account.token)
    follower.wait_for("#2 workflow_status PAUSED")
    producer.append_events(workflow, [COMPLETE])
    assert follower.finish() == 0, follower.transcript()
    # Without the reset, de-duplication against cursor 9 would drop events 1 to 3.
    assert follower.out[0] == "stream reset (cursor_ahead): replaying after #0"
    assert follower.ids() == [1, 2, 3]


def test_cursor_at_the_terminal_event_is_already_finished(server, account, workflow, producer, follow):
    producer.append_events(workflow, [_status("RUNNING"), COMPLETE])
    follower = follow(_url(server, workflow), "--last-event-id", "2", token=account.token)
    assert follower.finish() == 0, follower.transcript()
    assert follower.out == []
    assert any("already finished" in line for line in follower.err), follower.transcript()


def test_agent_text_chunks_are_printed_as_they_come(server, account, producer, follow):
    agent = producer.create_execution("agent", "writer", account.user.get_id())["exec_id"]
    producer.append_events(agent, [{"type": "agent_status", "data": {"status": "RUNNING"}}])
    follower = follow(_url(server, agent, "agents"), token=account.token)
    # The durable event proves the stream is live before best-effort chunks are sent.
    follower.wait_for("#1 agent_status RUNNING")
    chunks = server.api(f"/executions/agents/{agent}/chunks")
    text = {"chunks": ["Hello, ", "world\n", "second line"]}
    r = requests.post(chunks, json=text, headers=account.headers, timeout=10)
    assert r.status_code == 202
    follower.wait_for("Hello, world")
    producer.append_events(agent, [COMPLETE])
    assert follower.finish() == 0, follower.transcript()
    assert follower.out == ["#1 agent_status RUNNING", "Hello, world", "second line", '#2 complete SUCCESS {"rows":3}']


@pytest.mark.parametrize("case", ["unknown execution", "another user's execution", "bad token"])
def test_a_stream_that_cannot_be_followed_exits_3(server, auth, account, workflow, follow, case):
    exec_id, token = workflow, account.token
    if case == "unknown execution":
        exec_id = new_exec_id()
    elif case == "another user's execution":
        token = auth.user().token
    else:
        token = "sa_not-a-token"
    follower = follow(_url(server, exec_id), token=token)
    assert follower.finish() == 3, follower.transcript()
    status = "401" if case == "bad token" else "404"
    assert any(f"cannot follow: HTTP {status}" in line for line in follower.err), follower.transcript()


@pytest.mark.parametrize(
    "args, token",
    [
        ((), "sa_x"),
        (("URL",), None),
        (("not a url",), "sa_x"),
        (("URL", "--last-event-id", "-1"), "sa_x"),
        (("URL", "--token", "x"), "sa_x"),
    ],
)
def test_usage_errors_exit_2(server, workflow, follow, args, token):
    args = tuple(_url(server, workflow) if a == "URL" else a for a in args)
    follower = follow(*args, token=token)
    assert follower.finish() == 2, follower.transcript()
    assert any("usage:" in line for line in follower.err)


@pytest.fixture
def short_lived(database, tmp_path):
    """Streams end after ~1 s (SPEC §5.4 lifetime) and clients come back after 100 ms."""
    env = {
        **SHARED_SERVER_ENV,
        "STREAMAPP_STREAM_LIFETIME_S": "1",
        "STREAMAPP_HEARTBEAT_S": "0.5",  # must be below the lifetime
        "STREAMAPP_RETRY_MS": "100",
    }
    with live_server(database, tmp_path, env) as live:
        yield live


def test_lifetime_cuts_lose_and_repeat_nothing(short_lived, account, workflow, producer, follow):
    follower = follow(_url(short_lived, workflow), token=account.token)
    producer.append_events(workflow, [_status("RUNNING")])
    follower.wait_for("#1 workflow_status RUNNING")
    # Appends spread over ~3 s, so some land while the follower is between connections.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        producer.append_events(workflow, [_status("RUNNING")])
        time.sleep(0.05)  # pacing the producer, not waiting for an event
    last = producer.append_events(workflow, [COMPLETE]).last_id
    assert follower.finish() == 0, follower.transcript()
    assert follower.ids() == list(range(1, last + 1))
    assert sum("reconnecting" in line for line in follower.err) >= 2, follower.transcript()
