"""Direct writes and the generator path send the same bytes (PERFORMANCE.md's fast path, SPEC §5).

One scenario — replay, live events, the terminal event — is read off the wire
of two gunicorns that differ only in ``STREAMAPP_DIRECT_WRITES``: on, live
frames go straight from the hub to the parked stream's socket; off, every frame
is yielded by the stream's generator. The bodies must be byte for byte equal.
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


@pytest.fixture(scope="module")
def servers(database, tmp_path_factory):
    """The same app twice, the heartbeat at 1 s: direct writes on, and off (the generator path only)."""
    with (
        live_server(database, tmp_path_factory.mktemp("direct"), {**SHARED_SERVER_ENV}) as direct,
        live_server(
            database, tmp_path_factory.mktemp("generator"), {**SHARED_SERVER_ENV, "STREAMAPP_DIRECT_WRITES": "false"}
        ) as generator,
    ):
        yield {"direct": direct, "generator": generator}


def _direct_writes(live) -> float:
    text = requests.get(live.url + "/metrics", timeout=5).text
    return float(re.search(r"^streamapp_direct_writes_total (\S+)$", text, re.M).group(1))


@pytest.mark.parametrize("query", ["", "?events=warning"])
def test_both_paths_send_the_same_frames(servers, producer, account, workflow, query):
    append(producer, workflow, "workflow_start", "warning")
    before = {name: _direct_writes(live) for name, live in servers.items()}
    wires = {name: Wire(live, account.token, workflow, query) for name, live in servers.items()}
    for wire in wires.values():
        # A ping comes only from a stream past its replay, waiting for live events (parked).
        wire.read_until(lambda raw: PING in raw)
    append(producer, workflow, "warning", "progress")
    append(producer, workflow, "warning", "complete")
    for wire in wires.values():
        wire.read_until(lambda raw: raw.endswith(b"\r\n0\r\n\r\n"))
        wire.sock.close()
    bodies = {name: wire.body().replace(PING, b"") for name, wire in wires.items()}
    assert bodies["direct"] == bodies["generator"]
    frames, _ = parse(bodies["direct"])
    expected = ["1", "2", "3", "4", "5", "6"] if not query else ["2", "3", "5", "6"]
    assert [f.id for f in frames] == expected
    assert _direct_writes(servers["direct"]) > before["direct"]  # the fast path did write
    assert _direct_writes(servers["generator"]) == before["generator"]
