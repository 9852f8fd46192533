"""Every shell and Python example in the README and the docs, run as printed (SPEC §6).

Each page's ``sh`` and ``python`` blocks run in order in one scenario against a
live gunicorn, sharing exported variables, with only these changes: the
address ``http://127.0.0.1:8000`` becomes the live server's, the placeholder
token ``sa_…`` a real token, ``NAME=…`` the value an earlier block exported,
and ``.venv/bin/`` the test's own virtualenv. HTML comments steer a block:

* ``<!-- doc-test: skip: why -->`` — not run here; the reason says what runs it instead;
* ``<!-- doc-test: background -->`` — started, left running while later blocks
  run (a follower in "terminal 1"), and must then end by itself with exit 0;
* ``<!-- doc-test: expect: text -->`` — its output must contain ``text``;
* ``<!-- doc-test: cwd path -->`` — run in that directory of the repository.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import typing as t
from pathlib import Path

import pytest

from streamapp import accounts
from tests.conftest import ROOT
from tests.conftest import SECRET

pytestmark = pytest.mark.live

PAGES = [
    "README.md",
    "docs/quickstart.md",
    "docs/clients.md",
    "docs/integration.md",
    "docs/configuration.md",
    "docs/performance.md",
    "docs/performance-chunks.md",
    "examples/node/README.md",
    "examples/browser/README.md",
]
RUNNABLE = {"sh": "bash", "bash": "bash", "python": "python"}
DEV_EMAIL = "dev@streamapp.local"
# Blocks may be indented (inside a list item); the closing fence has the same indent.
BLOCK = re.compile(r"((?:^ *<!-- doc-test: [^\n]*-->\n)*)^( *)```(\w*)\n(.*?)^\2```", re.S | re.M)
DIRECTIVE = re.compile(r"<!-- doc-test: (skip: .+|background|expect: .+|cwd \S+) -->")
BLOCK_TIMEOUT_S = 90


@dataclasses.dataclass
class Block:
    page: str
    language: str
    text: str
    skip: str | None = None
    background: bool = False
    expect: list[str] = dataclasses.field(default_factory=list)
    cwd: str = "."


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page`` with their directives; a directive it does not know fails."""
    found = []
    for match in BLOCK.finditer((ROOT / page).read_text()):
        block = Block(page, match.group(3), textwrap.dedent(match.group(4)))
        for line in match.group(1).splitlines():
            directive = DIRECTIVE.fullmatch(line.strip())
            assert directive, f"{page}: unknown doc-test directive {line!r}"
            word = directive.group(1)
            if word.startswith("skip: "):
                block.skip = word.removeprefix("skip: ")
            elif word == "background":
                block.background = True
            elif word.startswith("expect: "):
                block.expect.append(word.removeprefix("expect: "))
            else:
                block.cwd = word.removeprefix("cwd ")
        found.append(block)
    return found


def _substitute(text: str, env: dict[str, str], base_url: str) -> str:
    text = text.replace("http://127.0.0.1:8000", base_url)
    text = text.replace("sa_…", env["TOKEN"])
    text = re.sub(r"\b([A-Z_]+)=…", lambda m: f"{m.group(1)}={env[m.group(1)]}", text)
    return text.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


@contextlib.contextmanager
def _node_lock() -> t.Iterator[None]:
    """One block at a time in examples/node: a page's `npm ci` replaces node_modules under another's `node`."""
    path = ROOT / "var" / "docs-node.lock"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _needs_node(text: str) -> bool:
    return bool(re.search(r"^\s*(npm|node)\b", text, re.M))


@dataclasses.dataclass
class Scenario:
    base_url: str
    env: dict[str, str]
    background: list[tuple[Block, subprocess.Popen[str]]] = dataclasses.field(default_factory=list)

    def run(self, block: Block) -> None:
        if _needs_node(block.text) and not shutil.which("node"):
            if os.environ.get("CI"):
                pytest.fail("node is not installed; .ci/run installs it (nodejs, npm)")
            pytest.skip("node is not installed")
        code = _substitute(block.text, self.env, self.base_url)
        cwd = ROOT / block.cwd
        if block.language == "python":
            command = [sys.executable, "-c", code]
        else:
            env_dump = tempfile.NamedTemporaryFile(delete=False)
            env_dump.close()
            script = f"set -euo pipefail\n{code}\n" + ("" if block.background else f"env -0 > {env_dump.name}\n")
            command = ["bash", "-c", script]
        with _node_lock() if _needs_node(block.text) else contextlib.nullcontext():
            process = subprocess.Popen(
                command, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            if block.background:
                self.background.append((block, process))
                return
            out, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
        _check(block, process.returncode, out)
        if block.language != "python":
            raw = Path(env_dump.name).read_bytes()
            os.unlink(env_dump.name)
            self.env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def finish(self) -> None:
        for block, process in self.background:
            try:
                out, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
                pytest.fail(f"{block.page}: this background block never ended:\n{block.text}\n{out}")
            _check(block, process.returncode, out)


def _check(block: Block, returncode: int, out: str) -> None:
    assert returncode == 0, f"{block.page}: exit {returncode}:\n{block.text}\n--- output ---\n{out}"
    for text in block.expect:
        assert text in out, f"{block.page}: {text!r} not in the output of:\n{block.text}\n--- output ---\n{out}"


@pytest.fixture(scope="module")
def dev_token(db: t.Any) -> tuple[str, str]:
    """The development user app.py would have made, and a token of it; (token, user id)."""
    with db.transaction() as cur:
        user = accounts.find_user(cur, DEV_EMAIL) or accounts.create_user(cur, DEV_EMAIL, "dev-password", admin=True)
        return accounts.create_token(cur, user.id, ["read", "publish"]), str(user.id)


@pytest.fixture
def finished_workflow(producer: t.Any, dev_token: tuple[str, str]) -> str:
    """A workflow of the development user with a few events and ``complete``: what the clients follow."""
    exec_id = t.cast(str, producer.create_execution("workflow", "docs", dev_token[1])["exec_id"])
    producer.append_events(
        exec_id,
        [
            {"type": "workflow_start", "data": {"workflow_id": "docs"}},
            {"type": "workflow_status", "data": {"status": "RUNNING"}},
            {"type": "tool_call", "data": {"tool_call_id": "c1", "tool_name": "search", "status": "SUCCESS"}},
            {"type": "complete", "data": {"status": "SUCCESS", "output": {"rows": 42}}},
        ],
    )
    return exec_id


def _scenario_env(server: t.Any, database: str, dev_token: tuple[str, str], exec_id: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "DATABASE_URL", "SECRET_KEY"))}
    return {
        **keep,
        "TOKEN": dev_token[0],
        "EXEC_ID": exec_id,
        "DATABASE_URL": database,
        "SECRET_KEY": SECRET,
        "STREAMAPP_OWNER_ID": dev_token[1],
        "PYTHONPATH": str(ROOT),
    }


@pytest.mark.parametrize("page", PAGES)
def test_every_example_runs_as_printed(
    page: str, server: t.Any, database: str, dev_token: tuple[str, str], finished_workflow: str
) -> None:
    if not (ROOT / page).exists():
        pytest.fail(f"{page} is missing")
    page_blocks = [b for b in blocks(page) if b.language in RUNNABLE]
    scenario = Scenario(server.url, _scenario_env(server, database, dev_token, finished_workflow))
    try:
        for block in page_blocks:
            if block.skip is None:
                scenario.run(block)
        scenario.finish()
    finally:
        for _, process in scenario.background:
            if process.poll() is None:
                process.kill()


def test_every_skip_says_what_runs_it_instead() -> None:
    for page in PAGES:
        if (ROOT / page).exists():
            for block in blocks(page):
                assert block.skip is None or len(block.skip) > 20, f"{page}: a skip needs a reason"
