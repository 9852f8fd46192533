"""streamapp inside a host Flask app: its users, its authorize hook, its URL prefix (SPEC §7);
and what ``init_app`` wires for every app: redaction before storage (issue 6)."""

from __future__ import annotations

import json

import pytest

from streamapp import StreamApp
from streamapp import create_app
from streamapp.hub import LISTENER_NAME
from tests.conftest import host_app
from tests.conftest import until
from tests.sse import parse


def _authorize(user, execution) -> bool:
    # The host's own rule: owners, plus anyone for executions named public-*.
    return execution["owner_id"] == user.get_id() or execution["name"].startswith("public-")


@pytest.fixture
def host(settings):
    app = host_app()

    @app.get("/")
    def home():
        return "host home"

    ext = StreamApp(settings=settings, url_prefix="/progress", authorize=_authorize)
    ext.init_app(app)
    yield app
    app.extensions["streamapp"].close()


def _create(client, user: str, name: str) -> dict:
    r = client.post("/progress/executions/workflows", json={"name": name}, headers={"X-User": user})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def test_mounts_under_the_hosts_prefix_with_the_hosts_users(host):
    client = host.test_client()
    assert client.get("/").get_data(as_text=True) == "host home"
    doc = _create(client, "alice", "private-job")
    assert doc["owner"] == "alice"
    assert doc["stream_url"] == f"/progress/executions/workflows/{doc['exec_id']}/stream"
    assert client.get("/api/v0/executions/workflows").status_code == 404
    assert client.get("/progress/auth/login").status_code == 404  # the host owns login


def test_hosts_authorize_hook_decides_who_reads(host):
    client = host.test_client()
    private = _create(client, "alice", "private-job")["exec_id"]
    public = _create(client, "alice", "public-job")["exec_id"]
    bob = {"X-User": "bob"}
    assert client.get(f"/progress/executions/workflows/{private}", headers=bob).status_code == 404
    assert client.get(f"/progress/executions/workflows/{public}", headers=bob).status_code == 200
    assert client.get(f"/progress/executions/workflows/{public}").status_code == 401


def test_streams_through_the_extension(host):
    client = host.test_client()
    alice = {"X-User": "alice"}
    exec_id = _create(client, "alice", "public-job")["exec_id"]
    events = {
        "events": [
            {"type": "workflow_status", "data": {"status": "RUNNING"}},
            {"type": "complete", "data": {"status": "SUCCESS"}},
        ]
    }
    r = client.post(f"/progress/executions/workflows/{exec_id}/events", json=events, headers=alice)
    assert r.status_code == 201
    response = client.get(f"/progress/executions/workflows/{exec_id}/stream", headers={"X-User": "bob"})
    frames, comments = parse(response.get_data())
    assert response.status_code == 200 and comments[0] == "connected"
    assert [(f.id, f.event) for f in frames] == [("1", "workflow_status"), ("2", "complete")]


# -- what init_app wires: redaction before storage (SPEC §7, issue 6) -----------------------------

SECRETS = (
    "hunter2-pass",
    "abc.def.ghi-bearer",
    "k-123456-key",
    "p4ss-w0rd",
    "s3cr3t-value",
    "tok-987654",
    "sa_0123456789ab_xyzSECRETxyz",
    "pw-1234-dsn",
    "123-45-6789",
)
TOOL_CALL = {
    "type": "tool_call",
    "data": {
        "tool_call_id": "c1",
        "tool_name": "http",
        "status": "SUCCESS",
        "input": {
            "url": "https://user:hunter2-pass@db.example.com/x",
            "headers": {"Authorization": "Bearer abc.def.ghi-bearer", "X-Api-Key": "k-123456-key"},
            "steps": [{"password": "p4ss-w0rd"}, {"deep": {"more": [{"client_secret": "s3cr3t-value"}]}}],
            "ssn": "123-45-6789",
        },
        "output": {"text": "got token=tok-987654 and sa_0123456789ab_xyzSECRETxyz", "prompt_tokens": 12},
    },
}
ERROR = {
    "type": "error",
    "data": {"status": "FAILED", "error": {"message": "connect failed: postgres://app:pw-1234-dsn@db/x"}},
}


def _stored_envelopes(db, exec_id: str) -> list[str]:
    with db.transaction() as cur:
        cur.execute("SELECT envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [row[0] for row in cur.fetchall()]


def _assert_redacted(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret
    assert "[REDACTED]" in text


@pytest.fixture
def redacting_client(settings):
    from streamapp import create_app

    app = create_app(settings.replace(redact_keys=("ssn",)))
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["streamapp"].close()


def test_appended_events_are_redacted_in_the_stored_row(redacting_client, account, db):
    client = redacting_client
    r = client.post("/api/v0/executions/workflows", json={"name": "w"}, headers=account.headers)
    exec_id = r.get_json()["exec_id"]
    r = client.post(
        f"/api/v0/executions/workflows/{exec_id}/events", json={"events": [TOOL_CALL, ERROR]}, headers=account.headers
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    tool_call, error = (json.loads(e) for e in _stored_envelopes(db, exec_id))
    _assert_redacted(json.dumps([tool_call, error]))
    data = tool_call["data"]
    assert data["input"]["url"] == "https://user:[REDACTED]@db.example.com/x"
    assert data["input"]["headers"] == {"Authorization": "[REDACTED]", "X-Api-Key": "[REDACTED]"}
    assert data["input"]["steps"] == [{"password": "[REDACTED]"}, {"deep": {"more": [{"client_secret": "[REDACTED]"}]}}]
    assert data["input"]["ssn"] == "[REDACTED]"  # STREAMAPP_REDACT_KEYS
    assert data["output"] == {"text": "got token=[REDACTED] and [REDACTED]", "prompt_tokens": 12}
    assert error["data"]["error"]["message"] == "connect failed: postgres://app:[REDACTED]@db/x"


def test_the_execution_input_is_redacted(client, account, db):
    body = {"name": "w", "input": {"api_key": "k-123456-key", "q": "hello", "dsn": "postgres://a:pw-1234-dsn@h/d"}}
    doc = client.post("/api/v0/executions/workflows", json=body, headers=account.headers).get_json()
    assert doc["input"] == {"api_key": "[REDACTED]", "q": "hello", "dsn": "postgres://a:[REDACTED]@h/d"}
    with db.transaction() as cur:
        cur.execute("SELECT input::text FROM executions WHERE exec_id = %s", (doc["exec_id"],))
        _assert_redacted(cur.fetchone()[0])


def test_the_apps_python_producer_redacts_too(app, account, db):
    state = app.extensions["streamapp"]
    exec_id = state.producer.create_execution("workflow", "w", account.user.get_id())["exec_id"]
    state.producer.append_events(exec_id, [TOOL_CALL])
    _assert_redacted(_stored_envelopes(db, exec_id)[0].replace("123-45-6789", "[REDACTED]"))


def test_execution_input_is_redacted_with_the_configured_keys(redacting_client, account, db):
    r = redacting_client.post(
        "/api/v0/executions/agents",
        json={"name": "a", "input": {"ssn": "078-05-1120", "api_key": "k-1", "n": 1}},
        headers=account.headers,
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    with db.transaction() as cur:
        cur.execute("SELECT input FROM executions WHERE exec_id = %s", (r.get_json()["exec_id"],))
        stored = cur.fetchone()[0]
    assert stored == {"ssn": "[REDACTED]", "api_key": "[REDACTED]", "n": 1}
    assert r.get_json()["input"] == stored


def _listeners(db) -> int:
    with db.autocommit() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (LISTENER_NAME,),
        )
        return cur.fetchone()[0]


def test_close_ends_the_apps_listener_and_pool(settings, db):
    # An app thrown away without close() kept its LISTEN connection for the life of the
    # process: a test suite built hundreds of them and ran out of PostgreSQL connections.
    before = _listeners(db)
    app = create_app(settings)
    state = app.extensions["streamapp"]
    state.hub.start()
    until(lambda: _listeners(db) == before + 1, 10, "the listener connected")
    state.close()
    until(lambda: _listeners(db) == before, 10, "the listener closed")
    assert state.hub.stopping and not state.db._idle
