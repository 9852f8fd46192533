"""What ``init_app`` wires, on a live gunicorn: the stream carries redacted events (SPEC §7, issue 6)."""

from __future__ import annotations

import pytest

from tests.sse import parse
from tests.test_extension import TOOL_CALL
from tests.test_extension import _assert_redacted

pytestmark = pytest.mark.live


def test_the_stream_carries_the_redacted_events(server, account):
    import requests

    r = requests.post(server.api("/executions/workflows"), json={"name": "w"}, headers=account.headers, timeout=10)
    exec_id = r.json()["exec_id"]
    complete = {"type": "complete", "data": {"status": "SUCCESS", "output": {"session_cookie": "tok-987654"}}}
    r = requests.post(
        server.api(f"/executions/workflows/{exec_id}/events"),
        json={"events": [TOOL_CALL, complete]},
        headers=account.headers,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    body = requests.get(server.api(f"/executions/workflows/{exec_id}/stream"), headers=account.headers, timeout=10)
    frames, _ = parse(body.content)
    assert [f.event for f in frames] == ["tool_call", "complete"]
    text = body.content.decode().replace("123-45-6789", "[REDACTED]")  # the live server has no extra keys
    _assert_redacted(text)
    assert frames[0].json["data"]["input"]["headers"]["Authorization"] == "[REDACTED]"
    assert frames[1].json["data"]["output"] == {"session_cookie": "[REDACTED]"}
