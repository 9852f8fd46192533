"""docs/nginx.conf, as written, in front of a live gunicorn (SPEC §9).

The test renders the documented file with only its two addresses replaced,
so the configuration users copy is the one that passed. nginx comes from the
distribution (see tests/live/nginx.py).
"""

from __future__ import annotations

import re
import secrets

import pytest
import requests

from tests.conftest import ROOT
from tests.live.nginx import running
from tests.sse import Stream
from tests.sse import parse

pytestmark = pytest.mark.live

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}


def render(upstream: str, listen: int) -> str:
    """docs/nginx.conf with its gunicorn address and listening port replaced, nothing else."""
    text = (ROOT / "docs" / "nginx.conf").read_text()
    text, servers = re.subn(r"server 127\.0\.0\.1:8000;", f"server {upstream};", text)
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", text)
    assert (servers, listens) == (1, 1), "docs/nginx.conf changed shape: update render()"
    return text


@pytest.fixture(scope="module")
def nginx(server, tmp_path_factory):
    """nginx running docs/nginx.conf in front of the shared gunicorn; its base URL."""
    upstream = server.url.removeprefix("http://")
    with running(lambda port: render(upstream, port), tmp_path_factory.mktemp("nginx")) as url:
        yield url


def _stream_url(base: str, exec_id: str) -> str:
    return f"{base}/api/v0/executions/workflows/{exec_id}/stream"


def test_prelude_and_live_frames_pass_unbuffered(nginx, account, workflow, producer):
    with Stream(_stream_url(nginx, workflow), account.headers) as stream:
        # Nothing has been appended yet: the prelude can only arrive if nginx passes it on at once.
        assert stream.next_item().retry is not None and stream.next_item() == "connected"
        producer.append_events(workflow, [{"type": "workflow_status", "data": {"status": "RUNNING"}}])
        assert stream.next_frame().id == "1"
        producer.append_events(workflow, [COMPLETE])
        assert [f.event for f in stream.rest()] == ["complete"]


def test_resume_and_204_through_nginx(nginx, account, workflow, producer):
    producer.append_events(workflow, [{"type": "warning", "data": {"code": "a", "message": "b"}}] * 3 + [COMPLETE])
    r = requests.get(_stream_url(nginx, workflow), headers={**account.headers, "Last-Event-ID": "2"}, timeout=10)
    assert [f.id for f in parse(r.content)[0]] == ["3", "4"]
    r = requests.get(_stream_url(nginx, workflow), headers={**account.headers, "Last-Event-ID": "4"}, timeout=10)
    assert r.status_code == 204


def test_streams_are_never_compressed(nginx, account, workflow, producer):
    producer.append_events(workflow, [COMPLETE])
    headers = {**account.headers, "Accept-Encoding": "gzip", "Last-Event-ID": "0"}
    r = requests.get(_stream_url(nginx, workflow), headers=headers, timeout=10, stream=True)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in r.headers
    assert r.headers.get("Cache-Control") == "no-cache, no-transform"
    r.close()


def test_same_origin_cookie_login_through_nginx(nginx, account):
    """The app compares a browser's Origin with the Host nginx passes on, port included."""
    session = requests.Session()
    r = session.post(
        nginx + "/api/v0/auth/login",
        json={"email": account.email, "password": account.password},
        headers={"Origin": nginx},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    r = session.post(
        nginx + "/api/v0/auth/login",
        json={"email": account.email, "password": account.password},
        headers={"Origin": "http://elsewhere.example"},
        timeout=10,
    )
    assert r.status_code == 403


def test_a_multiplexed_stream_of_a_hundred_long_ids_passes_unbuffered(nginx, account, producer):
    """SPEC §5.6: 100 ids of 64 characters and a ticket fit the request line nginx and gunicorn accept."""
    owner = account.user.get_id()
    exec_ids = [
        producer.create_execution("workflow", "m", owner, exec_id=secrets.token_hex(32))["exec_id"] for _ in range(100)
    ]
    entries = [f"workflows/{exec_id}" for exec_id in exec_ids]
    asked = requests.post(f"{nginx}/api/v0/stream-tickets", json={"ids": entries}, headers=account.headers, timeout=10)
    params = {"ids": ",".join(entries), "ticket": asked.json()["ticket"]}
    with Stream(f"{nginx}/api/v0/streams", params=params) as stream:
        assert stream.next_item().retry is not None and stream.next_item() == "connected"
        producer.append_events(exec_ids[42], [{"type": "workflow_status", "data": {"status": "RUNNING"}}])
        frame = stream.next_frame()
    assert frame.json["exec_id"] == exec_ids[42] and len(frame.id) <= 1024
