"""Batches: checked whole, and rendered alike by both append paths (SPEC §2, §4)."""

from __future__ import annotations

import json

import pytest

from streamapp import batches
from streamapp.errors import Conflict
from streamapp.errors import TooLarge

EXECUTION = {
    "exec_id": "e-1",
    "kind": "workflow",
    "status": "PENDING",
    "last_event_id": 4,
    "terminal_event_id": None,
    "last_sequence": 0,
    "output_schema": None,
}
EVENTS = [
    {"type": "workflow_status", "data": {"status": "RUNNING"}},
    {"type": "tool_call", "data": {"tool_call_id": "1", "tool_name": "db", "status": "ok", "input": {"password": "p"}}},
    {"type": "complete", "data": {"status": "SUCCESS"}},
]


def test_both_paths_render_the_same_envelopes():
    rendered = batches.render(EXECUTION, EVENTS, batches.Rules())
    tails = batches.render_tails(EXECUTION, EVENTS, batches.Rules())
    assert [row[0] for row in rendered.append.rows] == [5, 6, 7]
    for (event_id, type_name, _, envelope), (tail_type, tail) in zip(rendered.append.rows, tails.tails, strict=True):
        # The one-round-trip path has the database put '{"id":N' in front of the tail.
        spliced = json.loads(f'{{"id":{event_id}' + tail)
        assert type_name == tail_type
        assert {**json.loads(envelope), "ts": None} == {**spliced, "ts": None}
        assert list(spliced) == ["id", "type", "ts", "exec_id", "kind", "data"]
    assert json.loads(rendered.append.rows[1][3])["data"]["input"] == {"password": "[REDACTED]"}
    assert (rendered.result.first_id, rendered.result.last_id, rendered.result.status) == (5, 7, "SUCCESS")
    assert (rendered.append.terminal_event_id, tails.terminal_offset) == (7, 3)
    assert tails.status == rendered.append.status == "SUCCESS"


def test_nothing_may_follow_a_terminal_event_in_the_batch():
    with pytest.raises(Conflict):
        batches.render(EXECUTION, [*EVENTS, EVENTS[0]], batches.Rules())


def test_the_size_limit_is_on_the_redacted_data():
    data = {"password": "x" * 100}
    batches.render(EXECUTION, [{"type": "note", "data": data}], batches.Rules(max_event_bytes=40))
    with pytest.raises(TooLarge):
        batches.render(EXECUTION, [{"type": "note", "data": data}], batches.Rules(max_event_bytes=40, redact=None))


@pytest.mark.parametrize(
    "events, expected",
    [
        ([EVENTS[0]], False),
        ([EVENTS[0], {"type": "structured_delta", "data": {}}], True),
        (["not an event"], False),
    ],
)
def test_has_sequence(events, expected):
    assert batches.has_sequence(events) is expected
