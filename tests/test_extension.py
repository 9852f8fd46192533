"""streamapp inside a host Flask app: its users, its authorize hook, its URL prefix (SPEC §7)."""

from __future__ import annotations

import flask
import flask_login
import pytest

from streamapp import StreamApp
from tests.sse import parse


class HostUser(flask_login.UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _authorize(user, execution) -> bool:
    # The host's own rule: owners, plus anyone for executions named public-*.
    return execution["owner_id"] == user.get_id() or execution["name"].startswith("public-")


@pytest.fixture
def host(settings):
    app = flask.Flask("host")
    app.secret_key = "host-secret-" + "x" * 20
    manager = flask_login.LoginManager(app)
    manager.request_loader(lambda req: HostUser(req.headers["X-User"]) if "X-User" in req.headers else None)

    @app.get("/")
    def home():
        return "host home"

    ext = StreamApp(settings=settings, url_prefix="/progress", authorize=_authorize)
    ext.init_app(app)
    yield app
    app.extensions["streamapp"].db.close()


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
    events = {"events": [{"type": "workflow_status", "data": {"status": "RUNNING"}},
                         {"type": "complete", "data": {"status": "SUCCESS"}}]}
    r = client.post(f"/progress/executions/workflows/{exec_id}/events", json=events, headers=alice)
    assert r.status_code == 201
    response = client.get(f"/progress/executions/workflows/{exec_id}/stream", headers={"X-User": "bob"})
    frames, comments = parse(response.get_data())
    assert response.status_code == 200 and comments[0] == "connected"
    assert [(f.id, f.event) for f in frames] == [("1", "workflow_status"), ("2", "complete")]
