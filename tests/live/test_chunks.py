"""Agent and task streams: text chunks without a schema, JSON with one (SPEC §4, §5.2; issue 5)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time

import pytest
import requests

from streamapp.chunks import ChunkPublisher
from streamapp.db import Database
from streamapp.producer import Producer
from tests.sse import Reader
from tests.sse import Stream

pytestmark = pytest.mark.live

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def _create(server, account, kind="agents", **body) -> str:
    url = server.api(f"/executions/{kind}")
    r = requests.post(url, json={"name": "a", **body}, headers=account.headers, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["exec_id"]


def _chunks(server, account, exec_id, kind="agents", **body):
    return requests.post(
        server.api(f"/executions/{kind}/{exec_id}/chunks"), json=body, headers=account.headers, timeout=10
    )


def _events(server, account, exec_id, *events, kind="agents"):
    r = requests.post(
        server.api(f"/executions/{kind}/{exec_id}/events"),
        json={"events": [{"type": t, "data": d} for t, d in events]},
        headers=account.headers,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r


def _open(server, account, exec_id, kind="agents", **params) -> Stream:
    stream = Stream(server.api(f"/executions/{kind}/{exec_id}/stream"), account.headers, params)
    assert stream.next_item().retry is not None and stream.next_item() == "connected"
    return stream


def _subscribed(stream: Stream, server, account, exec_id, kind="agents") -> None:
    # A durable event proves the stream is live (subscribed) before chunks are sent.
    _events(server, account, exec_id, ("warning", {"code": "sync", "message": "sync"}), kind=kind)
    assert stream.next_frame().event == "warning"


@pytest.mark.parametrize("kind", ["agents", "tasks"])
def test_text_mode_frames_have_no_id_and_plain_text(server, account, kind):
    exec_id = _create(server, account, kind)
    with _open(server, account, exec_id, kind) as stream:
        _subscribed(stream, server, account, exec_id, kind)
        assert _chunks(server, account, exec_id, kind, text="Hello, ").status_code == 202
        assert _chunks(server, account, exec_id, kind, chunks=["line one\nline two", "\n\nend"]).status_code == 202
        frames = [stream.next_frame() for _ in range(3)]
    assert [(f.event, f.id) for f in frames] == [("llm_chunk", None)] * 3
    assert [f.data for f in frames] == ["Hello, ", "line one\nline two", "\n\nend"]


def test_json_mode_frames_carry_the_chunk_envelope(server, account):
    exec_id = _create(server, account, output_schema=SCHEMA)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        _chunks(server, account, exec_id, text="par\ntial")
        _events(server, account, exec_id, ("structured_delta", {"content": {"answer": "par"}, "sequence": 1}))
        chunk, delta = stream.next_frame(), stream.next_frame()
    assert (chunk.event, chunk.id) == ("llm_chunk", None)
    assert json.loads(chunk.data) == {
        "type": "llm_chunk",
        "exec_id": exec_id,
        "kind": "agent",
        "data": {"content": "par\ntial"},
    }
    assert (delta.event, delta.id) == ("structured_delta", "2")
    assert delta.json["data"] == {"content": {"answer": "par"}, "sequence": 1}


def test_workflow_streams_are_json(server, account):
    exec_id = _create(server, account, "workflows")
    with _open(server, account, exec_id, "workflows") as stream:
        _subscribed(stream, server, account, exec_id, "workflows")
        _chunks(server, account, exec_id, "workflows", text="log line")
        assert json.loads(stream.next_frame().data)["data"] == {"content": "log line"}


def test_a_100_kb_chunk_arrives_whole_and_in_order(server, account):
    exec_id = _create(server, account)
    big = "".join(f"{n:06d}é\n" for n in range(12_500))  # ~100 KB, multi-byte characters at part edges
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        assert _chunks(server, account, exec_id, chunks=[big, "after"]).status_code == 202
        first, second = stream.next_frame(), stream.next_frame()
    assert first.data == big
    assert second.data == "after"


def test_two_producers_never_interleave_inside_a_chunk_and_each_keeps_its_order(server, account, db):
    exec_id = _create(server, account)

    def piece(letter: str, n: int) -> str:
        return f"{letter}{n}:" + letter * 20_000  # several NOTIFY parts each

    def produce(letter: str) -> None:
        with ChunkPublisher(db, exec_id, interval_s=0.001) as out:
            for n in range(5):
                out.write(piece(letter, n))
                out.flush()

    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        threads = [threading.Thread(target=produce, args=(letter,)) for letter in "AB"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        received = [stream.next_frame().data for _ in range(10)]
    for letter in "AB":
        assert [text for text in received if text.startswith(letter)] == [piece(letter, n) for n in range(5)]


def test_publisher_never_sends_text_younger_than_its_interval(server, account, db):
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        with ChunkPublisher(db, exec_id, interval_s=3.0) as out:
            out.write("partial ")  # t=0 starts the timer
            out.write("line\n")  # flushed at its line end, long before the timer fires
            time.sleep(1.5)  # a producer that pauses mid-line
            out.write("next ")  # t=1.5: due at 4.5, not when the t=0 timer fires at 3
            time.sleep(2.0)
            # t=3.5: a second of margin before 4.5 on a slow machine. It ends in a space: a last
            # word with none after it would wait for more text, as it may be a secret's start.
            out.write("words ")
            assert stream.next_frame().data == "partial line\n"
            assert stream.next_frame().data == "next words "


def test_publisher_timer_survives_a_failed_flush(server, account, db, settings, caplog):
    exec_id = _create(server, account)
    pool = Database(settings.database_url, 1)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
    with _open(server, account, exec_id) as stream, ChunkPublisher(pool, exec_id, interval_s=0.01) as out:
        _subscribed(stream, server, account, exec_id)
        with db.transaction() as cur:  # the pool's only connection dies under the publisher
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out.write("lost with the dead connection ")
        deadline = time.monotonic() + 10
        while "database unavailable" not in caplog.text:  # the pool logs the outage once
            assert time.monotonic() < deadline, "the failed flush was not logged"
            time.sleep(0.01)
        out.write("after ")  # no line end: only the timer sends it
        assert stream.next_frame().data == "after "
    pool.close()


def test_publisher_coalesces_tokens_and_flushes_at_line_ends(server, account, db):
    exec_id = _create(server, account)
    tokens = [f"tok{n} " for n in range(300)]
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        with ChunkPublisher(db, exec_id, interval_s=60) as out:  # only line ends and close flush
            for token in tokens[:150]:
                out.write(token)
            out.write("end of line\n")
            assert stream.next_frame().data == "".join(tokens[:150]) + "end of line\n"
            for token in tokens[150:]:
                out.write(token)
        assert stream.next_frame().data == "".join(tokens[150:])


def test_publisher_closes_without_waiting_for_its_timer(server, account, db):
    exec_id = _create(server, account)
    out = ChunkPublisher(db, exec_id, interval_s=3600)
    out.write("held by an hour-long timer")
    time.sleep(0.5)  # the timer thread is now inside its hour-long wait
    closing = threading.Thread(target=out.close)  # flushes now; must not sit out the timer's wait
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close() waited for the timer"


def test_publisher_flushes_once_it_holds_max_chars(server, account, db):
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        with ChunkPublisher(db, exec_id, interval_s=60, max_chars=100) as out:  # no timer in this test
            for n in range(25):
                out.write(f"word{n:05d} ")  # 10 characters, no line end, no secret key
            chunks = [stream.next_frame().data for _ in range(2)]
        chunks.append(stream.next_frame().data)  # the rest, sent by close()
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert "".join(chunks) == "".join(f"word{n:05d} " for n in range(25))


def test_reconnect_resumes_durable_events_and_live_text_from_now(server, account):
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        _chunks(server, account, exec_id, text="seen")
        assert stream.next_frame().data == "seen"
    _chunks(server, account, exec_id, text="missed while away")
    _events(server, account, exec_id, ("agent_status", {"status": "RUNNING"}))
    with _open(server, account, exec_id, last_event_id="1") as stream:
        resumed = stream.next_frame()
        assert (resumed.id, resumed.event) == ("2", "agent_status")
        _chunks(server, account, exec_id, text="new")
        assert stream.next_frame().data == "new"
        _events(server, account, exec_id, ("complete", {"status": "SUCCESS", "output": "seen new"}))
        final = stream.rest()
    assert [(f.id, f.event) for f in final] == [("3", "complete")]
    assert final[0].json["data"]["output"] == "seen new"


@pytest.mark.parametrize("schema", [None, SCHEMA])
@pytest.mark.parametrize("events", ["llm_chunk", "agent_status"])
def test_filters_in_both_modes(server, account, schema, events):
    exec_id = _create(server, account, output_schema=schema)
    with _open(server, account, exec_id, events=events) as stream:
        _events(server, account, exec_id, ("agent_status", {"status": "RUNNING"}))
        complete = {"status": "SUCCESS", "output": {"answer": "x"}} if schema else {"status": "SUCCESS"}
        if events == "agent_status":
            _chunks(server, account, exec_id, text="x")
            assert stream.next_frame().event == "agent_status"
        else:
            # The filter hides every durable event before the end, so nothing shows when the
            # stream has subscribed: publish until a chunk comes through (chunks are best-effort).
            for _ in range(50):
                _chunks(server, account, exec_id, text="x")
                with contextlib.suppress(TimeoutError):
                    assert stream.next_frame(deadline_s=0.2).event == "llm_chunk"
                    break
            else:
                raise AssertionError("no chunk came through the llm_chunk filter")
        _events(server, account, exec_id, ("complete", complete))
        assert [f.event for f in stream.rest() if f.event != "llm_chunk"] == ["complete"]


def test_slow_reader_drops_chunks_but_never_a_durable_event(server, account):
    exec_id = _create(server, account)
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    path = f"/api/v0/executions/agents/{exec_id}/stream"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {account.token}\r\n\r\n".encode())
    sock.settimeout(10)
    reader, received = Reader(), []
    while "connected" not in received:
        received.extend(reader.feed(sock.recv(65536)))
    _events(server, account, exec_id, ("agent_status", {"status": "RUNNING"}))
    text = "y" * 8000
    for n in range(40):  # ~19 MB of chunks, far more than socket buffers hold, with events between
        _chunks(server, account, exec_id, chunks=[text] * 60)
        _events(server, account, exec_id, ("warning", {"code": "n", "message": str(n)}))
    _events(server, account, exec_id, ("complete", {"status": "SUCCESS"}))
    # Read until the parser has the whole `complete` frame: its `event:` line alone may arrive
    # in one recv and its `data:` line in the next.
    raw, items, ended = b"", [], False
    while not ended:
        data = sock.recv(1 << 20)
        if not data:
            break
        raw += data
        fresh = reader.feed(data)
        items.extend(fresh)
        ended = any(getattr(item, "event", None) == "complete" for item in fresh)
    sock.close()
    frames = [f for f in received + items if not isinstance(f, str)]
    ids = [int(f.id) for f in frames if f.id is not None]
    chunks_seen = sum(1 for f in frames if f.event == "llm_chunk")
    dropped = sum(int(n) for n in re.findall(rb"^: dropped (\d+) text chunks$", raw, re.M))
    assert ids == list(range(1, 43))
    assert chunks_seen < 40 * 60 and dropped > 0
    assert chunks_seen + dropped == 40 * 60  # every chunk either arrived or was counted


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({"text": "a\x00b"}, "NUL"),
        ({"chunks": []}, "chunks"),
        ({"chunks": ["ok", ""]}, "chunks[1]"),
        ({"text": "a", "chunks": ["b"]}, "text"),
        ({}, "text"),
    ],
)
def test_bad_chunks_are_422(server, account, body, fragment):
    exec_id = _create(server, account)
    r = _chunks(server, account, exec_id, **body)
    assert r.status_code == 422 and fragment in r.json()["error"]["message"]


def test_chunks_after_the_end_are_409(server, account):
    exec_id = _create(server, account)
    _events(server, account, exec_id, ("complete", {"status": "SUCCESS"}))
    assert _chunks(server, account, exec_id, text="late").status_code == 409


def test_chunk_authorization(server, auth, account):
    exec_id = _create(server, account)
    reader = auth.bearer(auth.token(account, ["read"]))
    other = auth.user()
    url = server.api(f"/executions/agents/{exec_id}/chunks")
    assert requests.post(url, json={"text": "x"}, headers=reader, timeout=10).status_code == 403
    assert requests.post(url, json={"text": "x"}, headers=other.headers, timeout=10).status_code == 404
    assert requests.post(url, json={"text": "x"}, timeout=10).status_code == 401


def test_complete_output_is_checked_against_the_schema(server, account, db):
    exec_id = _create(server, account, output_schema=SCHEMA)
    r = requests.post(
        server.api(f"/executions/agents/{exec_id}/events"),
        json={"events": [{"type": "complete", "data": {"status": "SUCCESS", "output": {"answer": 3}}}]},
        headers=account.headers,
        timeout=10,
    )
    message = r.json()["error"]["message"]
    assert r.status_code == 422 and "output_schema" in message
    assert "3 is not of type 'string'" in message  # the validator's own words
    with db.transaction() as cur:
        cur.execute("SELECT count(*) FROM events WHERE exec_id = %s", (exec_id,))
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ({"type": "nonsense"}, "'nonsense' is not valid"),
        ({"$ref": "#/definitions/missing"}, "does not resolve"),
        ({"properties": {"a": {"$ref": "https://example.com/schema.json"}}}, "does not resolve"),
        ("object", "must be a JSON Schema"),
        ([], "must be a JSON Schema"),
    ],
)
def test_invalid_output_schema_is_422(server, account, schema, fragment):
    r = requests.post(
        server.api("/executions/agents"),
        json={"name": "a", "output_schema": schema},
        headers=account.headers,
        timeout=10,
    )
    assert r.status_code == 422, r.text
    assert "output_schema" in r.json()["error"]["message"] and fragment in r.json()["error"]["message"]


@pytest.mark.parametrize("schema, output, status", [(True, {"x": 1}, 201), (False, {"x": 1}, 422)])
def test_boolean_output_schemas(server, account, schema, output, status):
    exec_id = _create(server, account, output_schema=schema)
    r = requests.post(
        server.api(f"/executions/agents/{exec_id}/events"),
        json={"events": [{"type": "complete", "data": {"status": "SUCCESS", "output": output}}]},
        headers=account.headers,
        timeout=10,
    )
    assert r.status_code == status, r.text


def test_local_refs_resolve_and_check_the_output(server, account):
    schema = {"$defs": {"word": {"type": "string"}}, "properties": {"answer": {"$ref": "#/$defs/word"}}}
    exec_id = _create(server, account, output_schema=schema)
    url = server.api(f"/executions/agents/{exec_id}/events")
    bad = {"events": [{"type": "complete", "data": {"status": "SUCCESS", "output": {"answer": 1}}}]}
    r = requests.post(url, json=bad, headers=account.headers, timeout=10)
    assert r.status_code == 422 and "1 is not of type 'string'" in r.text


def test_output_is_checked_before_redaction_and_stored_redacted(server, account, db):
    """The schema describes the real output; the stored copy is redacted (SPEC §7)."""
    schema = {"type": "object", "properties": {"api_key": {"type": "object"}}, "required": ["api_key"]}
    exec_id = _create(server, account, output_schema=schema)
    output = {"api_key": {"value": "k-123"}}
    r = requests.post(
        server.api(f"/executions/agents/{exec_id}/events"),
        json={"events": [{"type": "complete", "data": {"status": "SUCCESS", "output": output}}]},
        headers=account.headers,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    with db.transaction() as cur:
        cur.execute("SELECT envelope FROM events WHERE exec_id = %s", (exec_id,))
        stored = cur.fetchone()[0]
    assert "k-123" not in stored


@pytest.mark.parametrize(
    "text",
    [
        "a\nb",
        "a\rb",
        "a\r\nb",
        "ends with CR\r",
        "\r\n\r\n",
        "\rstarts with CR",
        "x\n\nevent: complete\nid: 999\ndata: injected",
        "data: fake\r\n\r\nid: 5\r\n\r\nretry: 1",
    ],
)
def test_text_cannot_break_framing(server, account, text):
    """Text mode puts raw text on the wire: CR, LF and CRLF become data lines, never fields (SPEC §5)."""
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        _chunks(server, account, exec_id, chunks=[text, "next"])
        frame, after = stream.next_frame(), stream.next_frame()
    # An EventSource joins data lines with LF, whatever line end the text used.
    assert (frame.event, frame.id, frame.retry) == ("llm_chunk", None, None)
    assert frame.data == text.replace("\r\n", "\n").replace("\r", "\n")
    assert (after.event, after.data) == ("llm_chunk", "next")


# A secret cut in two by a ChunkPublisher's own chunk boundary (SPEC §7, issue 11): the
# first write fills max_chars, so a chunk is sent inside it, deterministically, mid-secret.
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEF\nAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKjMzEfYyjiWA4R4"
SPLIT_SECRETS = {
    "vendor key cut in the middle": (
        "the key is sk-proj-Ab3dEf6h",
        "Ij9kLm2nOp5q_Rs8tUv1wXy4z, keep it\n",
        "Ab3dEf6hIj9kLm2nOp5q_Rs8tUv1wXy4z",
    ),
    "key = value cut after =": (
        'set password = "',
        'correct horse battery staple" and go\n',
        "correct horse battery staple",
    ),
    "bearer cut after the scheme": (
        "curl -H 'Authorization: Bearer ",
        "eyJhbGciOi.eyJzdWIi.c2ln' https://x\n",
        "eyJhbGciOi.eyJzdWIi.c2ln",
    ),
    "JSON pair cut in its value": ('{"api_key": "k-12345 ', '67890 abc", "n": 1}\n', "k-12345 67890 abc"),
    "URL password cut": ("dsn postgres://bob:hunt", "er2-2024@db/app ok\n", "hunter2-2024"),
    "private key cut mid-block": (
        f"loaded\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY[:28]}",
        f"{PEM_BODY[28:]}\n-----END RSA PRIVATE KEY-----\nok\n",
        PEM_BODY,
    ),
}


@pytest.mark.parametrize(("first", "second", "secret"), SPLIT_SECRETS.values(), ids=SPLIT_SECRETS.keys())
def test_a_secret_split_by_a_chunk_boundary_never_reaches_the_stream(server, account, db, first, second, secret):
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        # Only max_chars sends: no timer, and no line end in the first write.
        with ChunkPublisher(db, exec_id, interval_s=60, max_chars=len(first) - 2) as out:
            out.write(first)
            out.write(second)
            out.write("END-MARK\n")
        received = []
        while not received or not received[-1].endswith("END-MARK\n"):
            received.append(stream.next_frame().data)
    assert len(received) >= 2  # the boundary was real: text before the secret went out on its own
    seen = re.sub(r"\s", "", "".join(received))
    bare = re.sub(r"\s", "", secret)
    assert not [bare[i : i + 6] for i in range(len(bare) - 5) if bare[i : i + 6] in seen]  # no part of it
    assert "[REDACTED]" in seen


def test_producer_chunks_reach_open_streams_redacted(server, account, db):
    exec_id = _create(server, account)
    with _open(server, account, exec_id) as stream:
        _subscribed(stream, server, account, exec_id)
        Producer(db).publish_chunks(exec_id, ["first ", "password=hunter2\n"])
        assert [stream.next_frame().data for _ in range(2)] == ["first ", "password=[REDACTED]\n"]
