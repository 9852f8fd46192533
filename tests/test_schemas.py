"""The marshmallow schemas (SPEC §2, §5): what the request schemas load or refuse, and what the
response schemas show of rows read back from a real PostgreSQL."""

from __future__ import annotations

import datetime

import pytest
from marshmallow import ValidationError

from streamapp import accounts
from streamapp import schemas


def _refused(schema, data, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        schema.load(data)
    assert field in caught.value.messages, caught.value.messages


def test_an_execution_document_shows_the_stored_row(producer, account):
    row = producer.create_execution("agent", "summarise", account.user.get_id(), input={"n": 1})
    out = schemas.ExecutionOut().dump({**row, "stream_url": "/s"})
    assert set(out) == {
        "exec_id",
        "kind",
        "name",
        "status",
        "input",
        "output_schema",
        "owner",
        "last_event_id",
        "created_at",
        "stream_url",
    }
    assert (out["kind"], out["name"], out["input"], out["owner"]) == (
        "agent",
        "summarise",
        {"n": 1},
        str(account.user.id),
    )
    assert out["last_event_id"] == 0 and out["output_schema"] is None
    assert datetime.datetime.fromisoformat(out["created_at"]) == row["created_at"]


def test_a_token_document_never_shows_the_token(db, account):
    with db.transaction() as cur:
        token = accounts.create_token(cur, account.user.id, ["read"])
        [info, *_] = accounts.list_tokens(cur, account.user.id)
    out = schemas.TokenOut().dump(info)
    assert set(out) == {"prefix", "scopes", "created_at", "last_used_at", "revoked_at"}
    assert out["prefix"] == accounts.token_prefix(token) and out["scopes"] == ["read"]
    assert token not in repr(out)


def test_an_execution_create_takes_its_fields_and_defaults_the_rest():
    assert schemas.ExecutionCreate().load({"name": "wf", "exec_id": "run_1-A"}) == {
        "name": "wf",
        "exec_id": "run_1-A",
        "input": None,
        "output_schema": None,
        "owner": None,
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "wf", "input": {"k": ["\u0000"]}}, "input"),
        ({"name": "wf", "exec_id": "/x"}, "exec_id"),
        ({"name": "wf", "colour": "red"}, "colour"),
    ],
)
def test_an_execution_create_refuses(data, field):
    _refused(schemas.ExecutionCreate(), data, field)


@pytest.mark.parametrize("count", [0, 1001])
def test_an_append_holds_1_to_1000_events(count):
    _refused(schemas.EventsAppend(), {"events": [{"type": "warning"}] * count}, "events")
    assert len(schemas.EventsAppend().load({"events": [{"type": "warning"}] * 1000})["events"]) == 1000


def test_stream_parameters_load_to_numbers_and_a_set_of_types():
    loaded = schemas.StreamQuery().load({"last_event_id": "0042", "events": "warning, complete", "poll_ms": "250"})
    assert loaded == {
        "last_event_id": 42,
        "events": frozenset({"warning", "complete"}),
        "poll_ms": 250,
        "ticket": None,
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"poll_ms": "249"}, "poll_ms"),
        ({"poll_ms": "2001"}, "poll_ms"),
        ({"poll_ms": "+300"}, "poll_ms"),
        ({"events": "warning,Bad Type"}, "events"),
        ({"last_event_id": "-1"}, "last_event_id"),
        ({"cursor": "1"}, "cursor"),
    ],
)
def test_stream_parameters_refuse(data, field):
    _refused(schemas.StreamQuery(), data, field)


def test_the_list_limit_defaults_to_20_and_stays_within_1_to_100():
    assert schemas.ListQuery().load({}) == {"limit": 20, "cursor": None}
    for bad in ("0", "101", "1e2"):
        _refused(schemas.ListQuery(), {"limit": bad}, "limit")


@pytest.mark.parametrize(("data", "ok"), [({}, True), ({"reason": None}, True), ({"reason": ""}, False)])
def test_a_cancel_reason_is_optional_but_never_empty(data, ok):
    if ok:
        assert schemas.CancelBody().load(data) == {"reason": None}
    else:
        _refused(schemas.CancelBody(), data, "reason")
