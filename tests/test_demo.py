"""The demo page and ``/static/streamapp.js`` (SPEC §6): served where they should be, refused elsewhere.

The browser itself runs in tests/live/test_browser.py; here the Flask test client checks
who may reach what, and the demo producers' events are checked against the real catalog.
"""

from __future__ import annotations

import secrets

import flask
import pytest

from streamapp import StreamApp
from streamapp import accounts
from streamapp import create_app
from streamapp import demo
from streamapp import migrate
from streamapp.db import Database
from tests.conftest import ROOT
from tests.sse import parse

SCRIPT = ROOT / "streamapp" / "static" / "streamapp.js"
DEMO_ENDPOINTS = ("/demo/session", "/demo/workflow", "/demo/agent")


def ensure_dev_user(db: Database) -> accounts.User:
    """The development user ``app.py`` creates on a fresh ./var/, in the tests' database."""
    with db.transaction() as cur:
        user = accounts.find_user(cur, demo.DEV_EMAIL)
        return user or accounts.create_user(cur, demo.DEV_EMAIL, secrets.token_urlsafe(12), admin=True)


@pytest.fixture
def dev_user(db: Database) -> accounts.User:
    return ensure_dev_user(db)


def _read(response):
    """The whole body, then close: a file served by send_file is closed at once, not at GC."""
    response.get_data()
    response.close()
    return response


def test_the_examples_copy_of_streamapp_js_is_byte_identical():
    assert (ROOT / "examples" / "browser" / "streamapp.js").read_bytes() == SCRIPT.read_bytes()


@pytest.mark.parametrize("env", ["development", "production"])
def test_streamapp_js_is_served_at_static_in_every_environment(make_client, env):
    r = _read(make_client(env=env).get("/static/streamapp.js"))
    assert r.status_code == 200
    assert r.mimetype == "text/javascript"
    assert r.data == SCRIPT.read_bytes()


def test_a_host_app_gets_streamapp_js_beside_its_own_static_files_and_keeps_its_home(settings, tmp_path):
    (tmp_path / "host.css").write_text("body {}")
    (tmp_path / "streamapp.js").write_text("// an old copy the host once vendored")
    host = flask.Flask("host", static_folder=str(tmp_path), static_url_path="/static")

    @host.get("/")
    def home() -> str:
        return "host home"

    @host.get("/report")
    def report() -> str:
        return flask.render_template_string('<script src="{{ streamapp_js }}"></script>')

    StreamApp(settings=settings, url_prefix="/progress").init_app(host)
    try:
        client = host.test_client()
        assert _read(client.get("/")).data == b"host home"  # the demo never claims a host's `/`
        assert _read(client.get("/static/host.css")).data == b"body {}"
        # The rule without variables wins over the host's folder, for this one file only.
        r = _read(client.get("/static/streamapp.js"))
        assert (r.status_code, r.data) == (200, SCRIPT.read_bytes())
        # The template variable the legacy Flask example uses (examples/legacy_flask).
        assert _read(client.get("/report")).data == b'<script src="/static/streamapp.js"></script>'
        for path in DEMO_ENDPOINTS:
            assert client.post(path, json={}).status_code == 404
    finally:
        host.extensions["streamapp"].close()


def test_the_demo_page_is_served_in_development(client):
    r = _read(client.get("/"))
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    for text in ("Run a demo workflow", "Run a demo agent", 'aria-live="polite"', 'src="static/streamapp.js"'):
        assert text in page
    for asset in ("demo.js", "demo.css"):
        assert _read(client.get(f"/static/{asset}")).status_code == 200


def test_in_production_the_demo_page_and_endpoints_are_404(make_client):
    client = make_client(env="production")
    r = _read(client.get("/"))
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "not_found"
    for path in DEMO_ENDPOINTS:
        assert client.post(path, json={}).status_code == 404


def test_the_session_signs_in_the_development_user(client, dev_user):
    r = client.post("/demo/session", json={})
    assert r.status_code == 200
    assert r.get_json() == {"email": demo.DEV_EMAIL, "api": "/api/v0"}
    assert client.get("/api/v0/executions/workflows").status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"headers": {"Origin": "http://evil.example"}},
        {"data": "{}", "content_type": "text/plain"},
        # DNS rebinding: evil.example resolved to 127.0.0.1 still names itself in Host.
        {"headers": {"Host": "evil.example"}},
        # Another machine, when app.py was started with --host 0.0.0.0.
        {"environ_base": {"REMOTE_ADDR": "192.168.1.20"}},
    ],
)
def test_the_session_refuses_cross_site_requests_and_other_machines(client, dev_user, changes):
    request = {"json": {}} if "data" not in changes else {}
    r = client.post("/demo/session", **request, **changes)
    assert r.status_code == 403
    assert r.get_json()["error"]["code"] == "forbidden"
    assert client.get("/api/v0/executions/workflows").status_code == 401


def test_behind_a_local_proxy_the_session_judges_the_forwarded_client(make_client, dev_user):
    # nginx on the same machine connects from 127.0.0.1; with STREAMAPP_PROXY_HOPS=1 the
    # address that counts is the one it forwards, so a visitor from elsewhere is refused.
    client = make_client(proxy_hops=1)
    forwarded = {"X-Forwarded-For": "203.0.113.7", "Host": "127.0.0.1"}
    assert client.post("/demo/session", json={}, headers=forwarded).status_code == 403
    local = {"X-Forwarded-For": "127.0.0.1", "Host": "127.0.0.1"}
    assert client.post("/demo/session", json={}, headers=local).status_code == 200


def test_without_a_development_user_the_session_is_404(settings, empty_database):
    db = Database(empty_database, 1)
    migrate.upgrade(db)
    db.close()
    app = create_app(settings.replace(database_url=empty_database))
    try:
        r = app.test_client().post("/demo/session", json={})
        assert r.status_code == 404
        assert demo.DEV_EMAIL in r.get_json()["error"]["message"]
    finally:
        app.extensions["streamapp"].close()


@pytest.mark.parametrize("path", ["/demo/workflow", "/demo/agent"])
def test_the_demo_producers_refuse_without_a_session(client, path):
    r = client.post(path, json={})
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("path", ["/demo/workflow", "/demo/agent"])
def test_the_demo_producers_refuse_cross_site_requests_and_read_tokens(client, app, dev_user, auth, account, path):
    assert client.post("/demo/session", json={}).status_code == 200
    assert client.post(path, json={}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post(path, data="{}", content_type="text/plain").status_code == 403
    read_only = auth.bearer(auth.token(account, ["read"]))
    assert app.test_client().post(path, json={}, headers=read_only).status_code == 403


def _stream(client, account, kind: str, exec_id: str) -> list:
    r = client.get(f"/api/v0/executions/{kind}s/{exec_id}/stream", headers=account.headers)
    assert r.status_code == 200
    frames, _ = parse(r.get_data())
    return [f.json for f in frames]


def test_the_demo_workflow_is_catalog_content_ending_in_success(client, producer, account):
    exec_id = producer.create_execution("workflow", "nightly-sales-report", account.user.get_id())["exec_id"]
    demo.run_workflow(producer, exec_id, sleep=lambda seconds: None)
    events = _stream(client, account, "workflow", exec_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events[:2]] == ["workflow_start", "workflow_status"]
    steps = [e["data"]["task_id"] for e in events if e["type"] == "task_status" and e["data"]["status"] == "SUCCESS"]
    assert steps == [step[0] for step in demo.WORKFLOW_STEPS]
    assert sum(e["type"] == "tool_call" for e in events) == 2 * len(demo.WORKFLOW_STEPS)
    assert events[-1]["type"] == "complete" and events[-1]["data"]["status"] == "SUCCESS"
    doc = client.get(f"/api/v0/executions/workflows/{exec_id}", headers=account.headers).get_json()
    assert doc["status"] == "SUCCESS"


def test_the_demo_agent_ends_with_its_whole_answer(client, producer, account):
    exec_id = producer.create_execution("agent", "support-agent", account.user.get_id())["exec_id"]
    demo.run_agent(producer, exec_id, sleep=lambda seconds: None)
    events = _stream(client, account, "agent", exec_id)
    assert [e["type"] for e in events] == ["agent_status", "tool_call", "tool_call", "complete"]
    assert events[-1]["data"] == {"status": "SUCCESS", "output": demo.AGENT_ANSWER}
