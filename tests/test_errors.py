"""Errors and their problem documents (SPEC §2): every error answers ``{"error": {"code", "message"}}``
with its status, through ``errors.problem``, the one place that builds them."""

from __future__ import annotations

import pytest
from marshmallow import ValidationError
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import RequestEntityTooLarge

from streamapp import errors
from streamapp.errors import problem
from streamapp.schemas import ExecutionCreate
from tests.conftest import new_exec_id

# The tree of errors.py's docstring, status by status: a class that changes status fails here.
STATUSES = [
    (errors.BadRequest, 400, "bad_request"),
    (errors.NotAuthenticated, 401, "not_authenticated"),
    (errors.Forbidden, 403, "forbidden"),
    (errors.NotFound, 404, "not_found"),
    (errors.Conflict, 409, "conflict"),
    (errors.TooLarge, 413, "too_large"),
    (errors.Invalid, 422, "invalid"),
    (errors.TooManyStreams, 429, "too_many_streams"),
    (errors.TooManyAttempts, 429, "too_many_attempts"),
    (errors.Unavailable, 503, "unavailable"),
    (errors.DatabaseUnavailable, 503, "unavailable"),
]


@pytest.mark.parametrize(("cls", "status", "code"), STATUSES, ids=[c.__name__ for c, _, _ in STATUSES])
def test_each_error_answers_its_status_code_and_default_message(cls, status, code):
    body, answered, _ = problem(cls())
    assert answered == status
    assert body == {"error": {"code": code, "message": cls.default_message}}
    assert body["error"]["message"].strip()


def test_a_message_given_replaces_the_default():
    assert problem(errors.Invalid("name: too long"))[0] == {"error": {"code": "invalid", "message": "name: too long"}}


@pytest.mark.parametrize("cls", [errors.TooManyStreams, errors.TooManyAttempts, errors.Unavailable])
def test_retry_later_errors_say_when_in_retry_after(cls):
    assert problem(cls(retry_after=7))[2] == {"Retry-After": "7"}
    assert problem(cls())[2] == {"Retry-After": "1"}


@pytest.mark.parametrize("cls", [errors.BadRequest, errors.NotFound, errors.Conflict, errors.Invalid])
def test_other_errors_send_no_header(cls):
    assert problem(cls())[2] == {}


def test_a_real_conflict_from_the_producer_is_a_409(producer, account):
    exec_id = new_exec_id()
    producer.create_execution("workflow", "wf", account.user.get_id(), exec_id=exec_id)
    with pytest.raises(errors.Conflict) as caught:
        producer.create_execution("workflow", "wf", account.user.get_id(), exec_id=exec_id)
    body, status, _ = problem(caught.value)
    assert (status, body["error"]["code"]) == (409, "conflict") and exec_id in body["error"]["message"]


def test_a_schema_error_is_a_422_naming_each_field():
    with pytest.raises(ValidationError) as caught:
        ExecutionCreate().load({"name": "", "exec_id": "", "colour": "red"})
    body, status, headers = problem(caught.value)
    assert (status, body["error"]["code"], headers) == (422, "invalid", {})
    message = body["error"]["message"]
    assert all(f"{field}: " in message for field in ("name", "exec_id", "colour")), message


def test_nested_messages_become_one_line_per_field():
    messages = {"_schema": ["one of a or b"], "events": {0: {"type": ["Missing data."]}, 2: ["Not an object."]}}
    assert errors.flatten_messages(messages) == [
        "one of a or b",
        "events.0.type: Missing data.",
        "events.2: Not an object.",
    ]


def test_werkzeug_errors_are_json_and_keep_their_allow_header():
    body, status, headers = problem(MethodNotAllowed(valid_methods=["GET", "POST"]))
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    assert headers == {"Allow": "GET, POST"}


def test_werkzeug_413_is_our_too_large():
    body, status, _ = problem(RequestEntityTooLarge())
    assert (status, body["error"]["code"]) == (413, "too_large")


def test_anything_else_is_a_500_that_reveals_nothing():
    body, status, headers = problem(RuntimeError("password=hunter2 at db.internal:5432"))
    assert (status, headers) == (500, {})
    assert body == {"error": {"code": "internal_error", "message": "Internal server error."}}
