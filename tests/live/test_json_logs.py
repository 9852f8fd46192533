"""``STREAMAPP_LOG_FORMAT=json``: one JSON object per line, and one record per stream end (SPEC §9, issue 13).

The log is the real file a live gunicorn writes (its stdout and stderr: the
access log, the error log and the application's records).
"""

from __future__ import annotations

import json
import logging
import socket
import time
import typing as t

import pytest
import requests

from streamapp import logs
from tests.conftest import live_server
from tests.sse import Stream

pytestmark = pytest.mark.live

FORGING_PATH = b"/api/v0/%0d%0aFORGED%7f%1b[2J?ticket=secret-in-query%0d%0aFORGED"


@pytest.fixture(scope="module")
def json_server(database, tmp_path_factory):
    env = {"STREAMAPP_LOG_FORMAT": "json", "STREAMAPP_HEARTBEAT_S": "1"}
    with live_server(database, tmp_path_factory.mktemp("json-logs"), env) as live:
        yield live


def _records(server) -> list[dict[str, t.Any]]:
    """Every line of the log as a JSON object; fails on any line that is not one."""
    records = []
    for number, line in enumerate(server.log_text().split("\n"), 1):
        if line == "":
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def _wait_for(server, match: t.Callable[[dict[str, t.Any]], bool], deadline_s: float = 10.0) -> dict[str, t.Any]:
    """The first record ``match`` accepts; the access record is written just after the answer ends."""
    end = time.monotonic() + deadline_s
    while True:
        found = [r for r in _records(server) if match(r)]
        if found:
            return found[0]
        if time.monotonic() > end:
            raise AssertionError("no such record in the log")
        time.sleep(0.05)


def _stream_end(exec_id: str) -> t.Callable[[dict[str, t.Any]], bool]:
    return lambda r: r.get("message") == "stream ended" and r.get("exec_id") == exec_id


def _ticket(server, account, exec_id: str) -> str:
    r = requests.post(server.api(f"/executions/workflows/{exec_id}/stream-ticket"), headers=account.headers, timeout=10)
    assert r.status_code == 201, r.text
    return t.cast(str, r.json()["ticket"])


DATA = {"warning": {"code": "c", "message": "m"}, "complete": {"status": "SUCCESS"}}


def _append(producer, exec_id: str, *types: str) -> None:
    producer.append_events(exec_id, [{"type": name, "data": DATA[name]} for name in types])


def test_a_streams_access_record_has_its_path_and_no_query_string(json_server, account, workflow, producer):
    _append(producer, workflow, "warning", "complete")
    ticket = _ticket(json_server, account, workflow)
    url = json_server.api(f"/executions/workflows/{workflow}/stream")
    with Stream(url, params={"ticket": ticket}) as s:
        assert s.response.status_code == 200
        s.rest()
    path = f"/api/v0/executions/workflows/{workflow}/stream"
    record = _wait_for(json_server, lambda r: r.get("logger") == "gunicorn.access" and r.get("path") == path)
    assert record["method"] == "GET"
    assert record["status"] == 200
    assert record["protocol"] == "HTTP/1.1"
    assert record["remote_addr"] == "127.0.0.1"
    assert isinstance(record["bytes"], int) and record["bytes"] > 0
    assert isinstance(record["duration_ms"], (int, float)) and record["duration_ms"] >= 0
    assert {"ts", "level", "logger", "message"} <= record.keys()
    text = json_server.log_text()
    assert ticket not in text
    assert "ticket=" not in text
    assert account.token not in text


def test_a_stream_end_record_counts_what_the_client_received(json_server, account, workflow, producer):
    _append(producer, workflow, "warning", "warning")
    url = json_server.api(f"/executions/workflows/{workflow}/stream")
    with Stream(url, account.headers) as s:
        received = s.frames_until(lambda f: f.id == "2")
        # Live events now: on gunicorn they are written straight to the parked socket by the hub.
        _append(producer, workflow, "warning", "warning", "complete")
        received += s.rest()
    assert [f.id for f in received] == ["1", "2", "3", "4", "5"]
    record = _wait_for(json_server, _stream_end(workflow))
    assert record["level"] == "INFO"
    assert record["logger"] == "streamapp.stream"
    assert record["user_id"] == str(account.user.get_id())
    assert record["events_sent"] == len(received)
    assert record["last_id"] == 5
    assert record["reason"] == "terminal"
    assert record["kind"] == "workflow"
    assert isinstance(record["duration_s"], (int, float)) and record["duration_s"] >= 0
    assert account.token not in json_server.log_text()


def test_a_stream_that_resumes_logs_what_it_sent_after_its_cursor(json_server, account, workflow, producer):
    _append(producer, workflow, "warning", "warning", "warning", "complete")
    url = json_server.api(f"/executions/workflows/{workflow}/stream")
    with Stream(url, {**account.headers, "Last-Event-ID": "2"}) as s:
        received = s.rest()
    record = _wait_for(json_server, _stream_end(workflow))
    assert (record["events_sent"], record["last_id"], record["reason"]) == (len(received), 4, "terminal")


def test_a_forging_path_stays_inside_its_json_record(json_server):
    host, port = json_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET " + FORGING_PATH + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    record = _wait_for(json_server, lambda r: "FORGED" in str(r.get("path")))
    assert record["path"] == "/api/v0/\r\nFORGED\x7f\x1b[2J"
    lines = json_server.log_text().split("\n")
    assert not [line for line in lines if "FORGED" in line and not line.startswith("{")]
    # Printable ASCII only: no raw control character, DEL or line separator reaches the file.
    assert not [line for line in lines if any(ord(c) < 0x20 or ord(c) >= 0x7F for c in line)]
    assert "secret-in-query" not in json_server.log_text()


def test_every_line_of_the_log_is_a_json_object(json_server, account, workflow, producer):
    # A stream of its own, so access records and a stream end are there whichever tests of
    # this module ran on this xdist worker before it.
    _append(producer, workflow, "warning", "complete")
    with Stream(json_server.api(f"/executions/workflows/{workflow}/stream"), account.headers) as s:
        s.rest()
    _wait_for(json_server, _stream_end(workflow))
    _wait_for(json_server, lambda r: r.get("logger") == "gunicorn.access" and workflow in r.get("path", ""))
    records = _records(json_server)
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "gunicorn.access", "streamapp.stream"} <= loggers
    for record in records:
        assert {"ts", "level", "logger", "message", "pid"} <= record.keys()


def test_a_lifetime_end_is_logged_as_lifetime(database, tmp_path, account, workflow):
    env = {"STREAMAPP_LOG_FORMAT": "json", "STREAMAPP_HEARTBEAT_S": "1", "STREAMAPP_STREAM_LIFETIME_S": "2"}
    with live_server(database, tmp_path, env) as live:
        with Stream(live.api(f"/executions/workflows/{workflow}/stream"), account.headers) as s:
            s.ends_within(20)
        record = _wait_for(live, _stream_end(workflow))
    assert (record["reason"], record["events_sent"], record["last_id"]) == ("lifetime", 0, 0)


def test_text_logs_keep_their_format_and_log_stream_ends(server, account, workflow, producer):
    _append(producer, workflow, "warning", "complete")
    with Stream(server.api(f"/executions/workflows/{workflow}/stream"), account.headers) as s:
        frames = s.rest()
    access_mark = f"/workflows/{workflow}/stream HTTP/1.1"
    end = time.monotonic() + 10
    while True:  # the end record comes before the response's last byte, the access line after it
        lines = server.log_text().splitlines()
        ends = [line for line in lines if f"exec_id={workflow}" in line]
        access = [line for line in lines if access_mark in line]
        if (ends and access) or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert len(ends) == 1, ends
    line = ends[0]
    assert not line.startswith("{")
    assert "[INFO] stream ended " in line
    assert f"user_id={account.user.get_id()}" in line
    assert f"events_sent={len(frames)}" in line
    assert "last_id=2" in line
    assert line.endswith("reason=terminal")
    assert len(access) == 1 and f'"GET /api/v0/executions{access_mark}" 200 ' in access[0]


def test_json_formatter_escapes_what_json_does_not():
    record = logging.LogRecord("streamapp.x", logging.ERROR, __file__, 1, "said %s", ("a\x7fb\u2028\x85\r\n",), None)
    line = logs.JsonFormatter().format(record)
    assert all(0x20 <= ord(c) < 0x7F for c in line)
    assert json.loads(line)["message"] == "said a\x7fb\u2028\x85\r\n"
