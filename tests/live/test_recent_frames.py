"""Replays from a worker's recent frames send what a replay from the table sends (issue 10).

A worker that streams an execution keeps its newest frames, up to
``STREAMAPP_RECENT_FRAMES_BYTES``; a new stream whose cursor they cover
replays from them without a read. Three gunicorns differ only in that budget:
the default, ``0`` (every replay reads the table) and one that holds only the
last few frames. Each stream is read off the wire, byte for byte.
"""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import SHARED_SERVER_ENV
from tests.conftest import live_server
from tests.sse import parse
from tests.wire import Wire
from tests.wire import append

pytestmark = pytest.mark.live

PING = b": ping\n\n"
END = b"\r\n0\r\n\r\n"
SMALL_BUDGET = 1400  # a quarter of it per stream: one workflow frame for one stream, two or three for two


@pytest.fixture(scope="module")
def servers(database, tmp_path_factory):
    with (
        live_server(database, tmp_path_factory.mktemp("memory"), SHARED_SERVER_ENV) as memory,
        live_server(
            database, tmp_path_factory.mktemp("table"), {**SHARED_SERVER_ENV, "STREAMAPP_RECENT_FRAMES_BYTES": "0"}
        ) as table,
        live_server(
            database,
            tmp_path_factory.mktemp("small"),
            {**SHARED_SERVER_ENV, "STREAMAPP_RECENT_FRAMES_BYTES": str(SMALL_BUDGET)},
        ) as small,
    ):
        yield {"memory": memory, "table": table, "small": small}


def _replays(live) -> dict[str, float]:
    text = requests.get(live.url + "/metrics", timeout=5).text
    found = re.findall(r'^streamapp_replays_total\{source="(\w+)"\} (\S+)$', text, re.M)
    return {source: float(value) for source, value in found}


def _parked(live, token: str, exec_id: str, query: str = "") -> Wire:
    """A stream past its replay, waiting for live events: a ping comes only from there."""
    wire = Wire(live, token, exec_id, query)
    wire.read_until(lambda raw: PING in raw)
    return wire


def _finish(wires: list[Wire]) -> list[bytes]:
    bodies = []
    for wire in wires:
        wire.read_until(lambda raw: raw.endswith(END))
        wire.sock.close()
        bodies.append(wire.body().replace(PING, b""))
    return bodies


@pytest.mark.parametrize(
    ("query", "ids"),
    [("", ["1", "2", "3", "4", "5"]), ("?events=warning", ["2", "4", "5"]), ("?last_event_id=2", ["3", "4", "5"])],
)
def test_a_stream_beside_a_follower_replays_from_memory_the_bytes_the_table_gives(
    servers, producer, account, workflow, query, ids
):
    pair = {name: servers[name] for name in ("memory", "table")}
    append(producer, workflow, "workflow_start", "warning", "progress")
    followers = {name: _parked(live, account.token, workflow) for name, live in pair.items()}
    before = {name: _replays(live) for name, live in pair.items()}
    second = {name: _parked(live, account.token, workflow, query) for name, live in pair.items()}
    after = {name: _replays(live) for name, live in pair.items()}
    assert after["memory"]["memory"] == before["memory"]["memory"] + 1
    assert after["memory"]["table"] == before["memory"]["table"]
    assert after["table"]["memory"] == before["table"]["memory"] == 0  # a budget of 0 never serves from memory
    assert after["table"]["table"] == before["table"]["table"] + 1
    append(producer, workflow, "warning", "complete")
    memory, table = _finish([second["memory"], second["table"]])
    assert memory == table
    assert [frame.id for frame in parse(memory)[0]] == ids
    _finish(list(followers.values()))


def test_a_cursor_older_than_the_kept_frames_reads_the_table(servers, producer, account, workflow):
    live = servers["small"]
    append(producer, workflow, *["warning"] * 6)
    follower = _parked(live, account.token, workflow)
    counts = _replays(live)
    old = _parked(live, account.token, workflow)  # from 0: frames 1… were dropped for the budget
    counts_old = _replays(live)
    near = _parked(live, account.token, workflow, "?last_event_id=5")
    counts_near = _replays(live)
    assert counts_old["table"] == counts["table"] + 1 and counts_old["memory"] == counts["memory"]
    assert counts_near["memory"] == counts["memory"] + 1
    append(producer, workflow, "complete")
    bodies = _finish([old, near, follower])
    assert [frame.id for frame in parse(bodies[0])[0]] == [str(n) for n in range(1, 8)]
    assert [frame.id for frame in parse(bodies[1])[0]] == ["6", "7"]
    assert bodies[0] == bodies[2]
