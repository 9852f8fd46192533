"""Cancel (SPEC §2): ``POST …/cancel`` and the producer's ``cancel``, over a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from streamapp import producer as producer_api
from streamapp.errors import Conflict
from streamapp.errors import Invalid
from streamapp.errors import NotFound
from tests.conftest import new_exec_id

COMPLETE = {"type": "complete", "data": {"status": "SUCCESS"}}
RUNNING = {"type": "workflow_status", "data": {"status": "RUNNING"}}
CANCELED = {"status": "CANCELED", "error": {"message": "canceled", "code": "canceled"}}


def _cancel_url(exec_id: str, segment: str = "workflows") -> str:
    return f"/api/v0/executions/{segment}/{exec_id}/cancel"


def _events(db, exec_id: str) -> list[tuple[int, str, dict]]:
    with db.transaction() as cur:
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        return [(i, typ, json.loads(env)["data"]) for i, typ, env in cur.fetchall()]


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code
    return body


def _login(client, account) -> None:
    r = client.post("/api/v0/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 200


# -- HTTP -----------------------------------------------------------------------------------------


def test_cancel_without_a_body_appends_one_error_and_answers_the_document(client, account, workflow, producer, db):
    producer.append_events(workflow, [RUNNING])
    r = client.post(_cancel_url(workflow), headers=account.headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    doc = r.get_json()
    assert (doc["exec_id"], doc["status"], doc["last_event_id"]) == (workflow, "CANCELED", 2)
    assert doc["stream_url"].endswith(f"/workflows/{workflow}/stream") and doc["owner"] == account.user.get_id()
    assert _events(db, workflow)[1:] == [(2, "error", CANCELED)]
    assert client.get(f"/api/v0/executions/workflows/{workflow}", headers=account.headers).get_json() == doc


def test_the_reason_becomes_the_message_and_is_redacted(client, account, workflow, db):
    body = {"reason": "user pressed stop; password=hunter2"}
    r = client.post(_cancel_url(workflow), json=body, headers=account.headers)
    assert r.status_code == 200
    [(_, _, data)] = _events(db, workflow)
    assert data["error"]["code"] == "canceled" and data["status"] == "CANCELED"
    assert data["error"]["message"].startswith("user pressed stop") and "hunter2" not in data["error"]["message"]


@pytest.mark.parametrize("body", [{}, {"reason": None}])
def test_an_empty_or_null_reason_is_canceled(client, account, workflow, db, body):
    assert client.post(_cancel_url(workflow), json=body, headers=account.headers).status_code == 200
    assert _events(db, workflow) == [(1, "error", CANCELED)]


def test_cancel_after_the_end_is_409_and_stores_nothing(client, account, workflow, producer, db):
    producer.append_events(workflow, [COMPLETE])
    _error(client.post(_cancel_url(workflow), headers=account.headers), 409, "conflict")
    assert [typ for _, typ, _ in _events(db, workflow)] == ["complete"]


def test_a_second_cancel_is_409(client, account, workflow, db):
    assert client.post(_cancel_url(workflow), headers=account.headers).status_code == 200
    _error(client.post(_cancel_url(workflow), json={"reason": "again"}, headers=account.headers), 409, "conflict")
    assert len(_events(db, workflow)) == 1


def test_not_visible_is_the_same_404_as_unknown(client, auth, workflow, producer, db):
    other = auth.user()
    hidden = client.post(_cancel_url(workflow), headers=other.headers)
    unknown = client.post(_cancel_url(new_exec_id()), headers=other.headers)
    _error(hidden, 404, "not_found")
    assert hidden.get_data() == unknown.get_data()
    # Ended or not, someone else's execution is 404, never 409.
    producer.append_events(workflow, [COMPLETE])
    assert client.post(_cancel_url(workflow), headers=other.headers).get_data() == unknown.get_data()
    assert [typ for _, typ, _ in _events(db, workflow)] == ["complete"]


@pytest.mark.parametrize("segment", ["agents", "tasks", "jobs"])
def test_another_kind_or_an_unknown_segment_is_404(client, account, workflow, segment):
    _error(client.post(_cancel_url(workflow, segment), headers=account.headers), 404, "not_found")


def test_an_admin_may_cancel_anyones(client, auth, workflow, db):
    admin = auth.user(admin=True)
    assert client.post(_cancel_url(workflow), headers=admin.headers).get_json()["status"] == "CANCELED"
    assert len(_events(db, workflow)) == 1


def test_a_read_token_is_403_when_it_sees_the_execution_404_otherwise(client, auth, account, workflow, db):
    read = auth.bearer(auth.token(account, ["read"]))
    _error(client.post(_cancel_url(workflow), headers=read), 403, "forbidden")
    other_read = auth.bearer(auth.token(auth.user(), ["read"]))
    _error(client.post(_cancel_url(workflow), headers=other_read), 404, "not_found")
    assert _events(db, workflow) == []


def test_without_credentials_is_401(client, workflow):
    _error(client.post(_cancel_url(workflow)), 401, "not_authenticated")


@pytest.mark.parametrize(
    "body, status",
    [
        ({"reason": ""}, 422),
        ({"reason": "x" * 1001}, 422),
        ({"reason": 5}, 422),
        ({"reason": "a\u0000b"}, 422),
        ({"why": "x"}, 422),
        (["x"], 422),
    ],
)
def test_a_bad_reason_is_refused_and_nothing_is_stored(client, account, workflow, db, body, status):
    assert client.post(_cancel_url(workflow), json=body, headers=account.headers).status_code == status
    assert _events(db, workflow) == []


@pytest.mark.parametrize("data", [b"reason=x", b"{not json"])
def test_a_body_that_is_not_json_is_400(client, account, workflow, db, data):
    headers = {**account.headers, "Content-Type": "application/json" if data.startswith(b"{") else "text/plain"}
    _error(client.post(_cancel_url(workflow), data=data, headers=headers), 400, "bad_request")
    assert _events(db, workflow) == []


def test_a_reason_of_the_longest_length_is_kept(client, account, workflow, db):
    assert client.post(_cancel_url(workflow), json={"reason": "r" * 1000}, headers=account.headers).status_code == 200
    assert _events(db, workflow)[0][2]["error"]["message"] == "r" * 1000


# -- a session cookie: the cross-site rule of every state-changing request (SPEC §7) -------------


def test_a_cookie_request_must_be_json_even_without_a_body(client, account, workflow, db):
    _login(client, account)
    _error(client.post(_cancel_url(workflow)), 403, "forbidden")
    _error(client.post(_cancel_url(workflow), data={"reason": "x"}), 403, "forbidden")
    assert _events(db, workflow) == []
    r = client.post(_cancel_url(workflow), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.get_json()["status"] == "CANCELED"


def test_a_cookie_request_from_another_origin_is_403(client, account, workflow, db):
    _login(client, account)
    r = client.post(_cancel_url(workflow), json={"reason": "x"}, headers={"Origin": "https://evil.example"})
    _error(r, 403, "forbidden")
    assert _events(db, workflow) == []
    assert client.post(_cancel_url(workflow), json={}).status_code == 200  # no Origin: a same-site tool


# -- the producer API -------------------------------------------------------------------------------


def test_producer_cancel_returns_the_row_after(producer, workflow, db):
    producer.append_events(workflow, [RUNNING])
    row = producer.cancel(workflow, reason="shutting down")
    assert (row["status"], row["last_event_id"], row["terminal_event_id"]) == ("CANCELED", 2, 2)
    assert _events(db, workflow)[1][2]["error"] == {"message": "shutting down", "code": "canceled"}
    with pytest.raises(Conflict):
        producer.cancel(workflow)


def test_producer_cancel_errors(producer, workflow, db):
    with pytest.raises(NotFound):
        producer.cancel(new_exec_id())
    with pytest.raises(NotFound):
        producer.cancel(workflow, kind="agent")
    for reason in ("", 7):
        with pytest.raises(Invalid):
            producer.cancel(workflow, reason=reason)  # type: ignore[arg-type]
    assert _events(db, workflow) == []


def test_cancel_inside_the_callers_transaction_commits_with_it(db, producer, account):
    exec_id = producer.create_execution("task", "t", account.user.get_id())["exec_id"]
    with pytest.raises(RuntimeError), db.transaction() as cur:
        producer_api.cancel(cur, exec_id, kind="task")
        raise RuntimeError("the host's own work failed")
    assert _events(db, exec_id) == []  # rolled back with the host's transaction
    with db.transaction() as cur:
        row = producer_api.cancel(cur, exec_id, reason="done with it")
    assert row["status"] == "CANCELED" and _events(db, exec_id)[0][2]["error"]["message"] == "done with it"
