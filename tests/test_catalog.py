"""The event catalog: validation, status changes and the published description (SPEC §4)."""

from __future__ import annotations

import json

import pytest

from streamapp import catalog
from streamapp.catalog import status_after
from streamapp.catalog import validate_event
from streamapp.errors import Invalid

TOOL = {"tool_call_id": "c1", "tool_name": "search", "status": "done"}
ERROR = {"status": "FAILED", "error": {"message": "boom"}}


def _invalid(kind: str, type_name, data) -> str:
    with pytest.raises(Invalid) as info:
        validate_event(kind, type_name, data)
    return info.value.message


@pytest.mark.parametrize(
    "kind, type_name, data",
    [
        ("workflow", "workflow_start", {"workflow_id": "w"}),
        ("workflow", "workflow_start", {"workflow_id": "w", "input": [1, None]}),
        ("workflow", "workflow_status", {"status": "RUNNING"}),
        ("workflow", "workflow_status", {"status": "PAUSED", "reason": "waiting"}),
        ("agent", "agent_status", {"status": "PENDING"}),
        ("agent", "agent_status", {"status": "SUCCESS", "task_id": "step-1"}),
        ("task", "task_status", {"status": "RUNNING"}),
        ("task", "task_status", {"status": "FAILED", "task_id": "sub"}),
        ("workflow", "task_status", {"status": "RUNNING", "task_id": "t1"}),
        ("workflow", "task_status", {"status": "SUCCESS", "task_id": "t1"}),
        ("workflow", "task_status", {"status": "TIMED_OUT", "task_id": "t1", "reason": "slow"}),
        ("workflow", "tool_call", TOOL),
        ("agent", "tool_call", {**TOOL, "input": {"q": 1}, "output": "x", "error": None, "duration_ms": 1.5}),
        ("task", "tool_call", {**TOOL, "duration_ms": 0}),
        ("agent", "structured_delta", {"content": {"a": 1}, "sequence": 1}),
        ("task", "structured_delta", {"content": None, "sequence": 7}),
        ("workflow", "warning", {"code": "slow", "message": "taking long"}),
        ("agent", "complete", {"status": "SUCCESS"}),
        ("task", "complete", {"status": "SUCCESS", "output": [1], "usage": {"tokens": 3}}),
        ("workflow", "error", ERROR),
        ("agent", "error", {"status": "CANCELED", "error": {"message": "stop", "code": "user"}}),
        ("task", "error", {"status": "TIMED_OUT", "error": {"message": "late"}}),
        ("workflow", "deploy_step", {"anything": [1, 2]}),
        ("agent", "custom", {}),
        ("task", "x" * 64, {"nested": {"deep": True}}),
        ("workflow", "warning", {"code": "c", "message": "m", "extra": 1}),
    ],
)
def test_valid_events_pass(kind, type_name, data):
    validate_event(kind, type_name, data)


@pytest.mark.parametrize("type_name", ["", "Bad", "1x", "_x", "a-b", "a b", "a\n", "\u00e9", "x" * 65, None, 5])
def test_bad_type_names_are_refused(type_name):
    assert "must match ^[a-z][a-z0-9_]{0,63}$" in _invalid("workflow", type_name, {})


@pytest.mark.parametrize("data", [None, [], "text", 1, True])
@pytest.mark.parametrize("type_name", ["warning", "custom_type"])
def test_data_must_be_an_object(type_name, data):
    assert _invalid("workflow", type_name, data) == f"{type_name}.data must be a JSON object"


@pytest.mark.parametrize("kind", catalog.KINDS)
def test_llm_chunk_is_never_durable(kind):
    assert "never durable" in _invalid(kind, "llm_chunk", {"content": "hi"})


@pytest.mark.parametrize(
    "kind, type_name, data",
    [
        ("agent", "workflow_start", {"workflow_id": "w"}),
        ("task", "workflow_status", {"status": "RUNNING"}),
        ("workflow", "agent_status", {"status": "RUNNING"}),
        ("agent", "task_status", {"status": "RUNNING", "task_id": "t"}),
        ("workflow", "structured_delta", {"content": 1, "sequence": 1}),
    ],
)
def test_type_outside_its_kinds_is_refused(kind, type_name, data):
    assert _invalid(kind, type_name, data) == f"{type_name} is not an event of {kind} executions"


@pytest.mark.parametrize(
    "kind, type_name, data, field",
    [
        ("workflow", "workflow_start", {}, "workflow_start.data.workflow_id"),
        ("workflow", "workflow_status", {"reason": "x"}, "workflow_status.data.status"),
        ("agent", "agent_status", {}, "agent_status.data.status"),
        ("task", "task_status", {}, "task_status.data.status"),
        ("task", "tool_call", {"tool_name": "t", "status": "s"}, "tool_call.data.tool_call_id"),
        ("task", "tool_call", {"tool_call_id": "c", "status": "s"}, "tool_call.data.tool_name"),
        ("task", "tool_call", {"tool_call_id": "c", "tool_name": "t"}, "tool_call.data.status"),
        ("agent", "structured_delta", {"sequence": 1}, "structured_delta.data.content"),
        ("agent", "structured_delta", {"content": "x"}, "structured_delta.data.sequence"),
        ("workflow", "warning", {"message": "m"}, "warning.data.code"),
        ("workflow", "warning", {"code": "c"}, "warning.data.message"),
        ("workflow", "complete", {}, "complete.data.status"),
        ("workflow", "error", {"error": {"message": "m"}}, "error.data.status"),
        ("workflow", "error", {"status": "FAILED"}, "error.data.error"),
    ],
)
def test_required_fields(kind, type_name, data, field):
    assert _invalid(kind, type_name, data) == f"{field} is required"


@pytest.mark.parametrize(
    "kind, type_name, data, message",
    [
        ("workflow", "workflow_start", {"workflow_id": 5}, "workflow_start.data.workflow_id must be a JSON string"),
        (
            "workflow",
            "workflow_status",
            {"status": "RUNNING", "reason": ["x"]},
            "workflow_status.data.reason must be a JSON string",
        ),
        (
            "workflow",
            "task_status",
            {"status": "RUNNING", "task_id": 3},
            "task_status.data.task_id must be a JSON string",
        ),
        (
            "agent",
            "agent_status",
            {"status": "RUNNING", "task_id": 3},
            "agent_status.data.task_id must be a JSON string",
        ),
        ("task", "tool_call", {**TOOL, "tool_call_id": None}, "tool_call.data.tool_call_id must be a JSON string"),
        ("task", "tool_call", {**TOOL, "duration_ms": "5"}, "tool_call.data.duration_ms must be a JSON number"),
        ("task", "tool_call", {**TOOL, "duration_ms": True}, "tool_call.data.duration_ms must be a JSON number"),
        ("task", "tool_call", {**TOOL, "duration_ms": -1}, "tool_call.data.duration_ms must be at least 0"),
        (
            "agent",
            "structured_delta",
            {"content": 1, "sequence": True},
            "structured_delta.data.sequence must be a JSON integer",
        ),
        (
            "agent",
            "structured_delta",
            {"content": 1, "sequence": 1.0},
            "structured_delta.data.sequence must be a JSON integer",
        ),
        (
            "agent",
            "structured_delta",
            {"content": 1, "sequence": "1"},
            "structured_delta.data.sequence must be a JSON integer",
        ),
        (
            "agent",
            "structured_delta",
            {"content": 1, "sequence": 0},
            "structured_delta.data.sequence must be at least 1",
        ),
        ("workflow", "warning", {"code": 1, "message": "m"}, "warning.data.code must be a JSON string"),
        ("workflow", "complete", {"status": True}, "complete.data.status must be a JSON string"),
        ("workflow", "complete", {"status": "SUCCESS", "usage": [1]}, "complete.data.usage must be a JSON object"),
        ("workflow", "error", {"status": "FAILED", "error": "boom"}, "error.data.error must be a JSON object"),
    ],
)
def test_wrong_json_types(kind, type_name, data, message):
    assert _invalid(kind, type_name, data) == message


@pytest.mark.parametrize(
    "kind, type_name, data, message",
    [
        (
            "workflow",
            "workflow_status",
            {"status": "running"},
            "workflow_status.data.status must be one of PENDING, RUNNING, PAUSED",
        ),
        (
            "workflow",
            "workflow_status",
            {"status": "SUCCESS"},
            "workflow_status.data.status must be one of PENDING, RUNNING, PAUSED",
        ),
        (
            "agent",
            "agent_status",
            {"status": "DONE"},
            "agent_status.data.status must be one of PENDING, RUNNING, PAUSED, SUCCESS, FAILED, CANCELED, TIMED_OUT",
        ),
        ("workflow", "complete", {"status": "FAILED"}, "complete.data.status must be one of SUCCESS"),
        (
            "workflow",
            "error",
            {"status": "SUCCESS", "error": {"message": "m"}},
            "error.data.status must be one of FAILED, CANCELED, TIMED_OUT",
        ),
    ],
)
def test_choices(kind, type_name, data, message):
    assert _invalid(kind, type_name, data) == message


@pytest.mark.parametrize(
    "error, message",
    [
        ({}, "error.data.error.message is required and must be a JSON string"),
        ({"message": 1}, "error.data.error.message is required and must be a JSON string"),
        ({"message": "m", "code": 5}, "error.data.error.code must be a JSON string"),
    ],
)
def test_error_object_fields(error, message):
    assert _invalid("task", "error", {"status": "FAILED", "error": error}) == message


@pytest.mark.parametrize(
    "kind, type_name, status",
    [
        ("agent", "agent_status", "SUCCESS"),
        ("agent", "agent_status", "FAILED"),
        ("task", "task_status", "CANCELED"),
        ("task", "task_status", "TIMED_OUT"),
    ],
)
def test_terminal_status_about_the_execution_itself_is_refused(kind, type_name, status):
    message = _invalid(kind, type_name, {"status": status})
    assert message.startswith(f"{type_name}.data.status must be one of PENDING, RUNNING, PAUSED")
    assert "complete or error" in message


def test_task_status_inside_a_workflow_needs_task_id():
    assert _invalid("workflow", "task_status", {"status": "RUNNING"}) == (
        "task_status.data.task_id is required inside a workflow"
    )


@pytest.mark.parametrize("status", catalog.STATUSES)
def test_step_status_may_carry_any_status(status):
    validate_event("workflow", "task_status", {"status": status, "task_id": "step"})


@pytest.mark.parametrize(
    "kind, type_name, data, status",
    [
        ("workflow", "workflow_status", {"status": "RUNNING"}, "RUNNING"),
        ("workflow", "workflow_status", {"status": "PAUSED"}, "PAUSED"),
        ("agent", "agent_status", {"status": "RUNNING"}, "RUNNING"),
        ("task", "task_status", {"status": "PENDING"}, "PENDING"),
        ("workflow", "complete", {"status": "SUCCESS"}, "SUCCESS"),
        ("agent", "error", {"status": "CANCELED", "error": {"message": "m"}}, "CANCELED"),
        ("task", "error", {"status": "TIMED_OUT", "error": {"message": "m"}}, "TIMED_OUT"),
        ("workflow", "task_status", {"status": "FAILED", "task_id": "t"}, None),
        ("task", "task_status", {"status": "SUCCESS", "task_id": "t"}, None),
        ("agent", "agent_status", {"status": "SUCCESS", "task_id": "t"}, None),
        ("workflow", "workflow_start", {"workflow_id": "w"}, None),
        ("agent", "tool_call", {**TOOL, "status": "FAILED"}, None),
        ("agent", "structured_delta", {"content": 1, "sequence": 1}, None),
        ("workflow", "warning", {"code": "c", "message": "m"}, None),
        ("workflow", "deploy_step", {"status": "SUCCESS"}, None),
    ],
)
def test_status_after(kind, type_name, data, status):
    assert status_after(kind, type_name, data) == status


def test_describe_is_json():
    assert json.loads(json.dumps(catalog.describe())) == catalog.describe()


def test_describe_pattern_and_terminal_types():
    described = catalog.describe()
    assert described["type_pattern"] == "^[a-z][a-z0-9_]{0,63}$"
    assert described["terminal_types"] == ["complete", "error"]


def test_describe_lists_every_spec_type():
    names = [t["type"] for t in catalog.describe()["types"]]
    assert names == [
        "workflow_start",
        "workflow_status",
        "agent_status",
        "task_status",
        "tool_call",
        "structured_delta",
        "warning",
        "complete",
        "error",
        "llm_chunk",
    ]


def _described(name: str) -> dict:
    return next(t for t in catalog.describe()["types"] if t["type"] == name)


@pytest.mark.parametrize(
    "name, kinds, durable, terminal",
    [
        ("workflow_start", ["workflow"], True, False),
        ("workflow_status", ["workflow"], True, False),
        ("agent_status", ["agent"], True, False),
        ("task_status", ["task", "workflow"], True, False),
        ("tool_call", ["workflow", "agent", "task"], True, False),
        ("structured_delta", ["agent", "task"], True, False),
        ("warning", ["workflow", "agent", "task"], True, False),
        ("complete", ["workflow", "agent", "task"], True, True),
        ("error", ["workflow", "agent", "task"], True, True),
        ("llm_chunk", ["workflow", "agent", "task"], False, False),
    ],
)
def test_describe_kinds_and_flags(name, kinds, durable, terminal):
    described = _described(name)
    assert (described["kinds"], described["durable"], described["terminal"]) == (kinds, durable, terminal)
    assert described["description"]


@pytest.mark.parametrize(
    "name, fields",
    [
        ("workflow_start", {"workflow_id": True, "input": False}),
        ("workflow_status", {"status": True, "reason": False}),
        ("agent_status", {"status": True, "task_id": False, "reason": False}),
        ("task_status", {"status": True, "task_id": False, "reason": False}),
        (
            "tool_call",
            {
                "tool_call_id": True,
                "tool_name": True,
                "status": True,
                "input": False,
                "output": False,
                "error": False,
                "duration_ms": False,
            },
        ),
        ("structured_delta", {"content": True, "sequence": True}),
        ("warning", {"code": True, "message": True}),
        ("complete", {"status": True, "output": False, "usage": False}),
        ("error", {"status": True, "error": True}),
    ],
)
def test_describe_fields_match_spec(name, fields):
    assert {f["name"]: f["required"] for f in _described(name)["fields"]} == fields


def test_describe_carries_choices_and_minimums():
    status = _described("workflow_status")["fields"][0]
    assert status == {"name": "status", "type": "string", "required": True, "choices": ["PENDING", "RUNNING", "PAUSED"]}
    sequence = _described("structured_delta")["fields"][1]
    assert sequence == {"name": "sequence", "type": "integer", "required": True, "minimum": 1, "sequence": True}
    assert _described("warning")["fields"][0] == {"name": "code", "type": "string", "required": True}


def _described_field(type_name: str, name: str) -> dict:
    return next(f for f in _described(type_name)["fields"] if f["name"] == name)


@pytest.mark.parametrize("type_name", ["agent_status", "task_status"])
def test_describe_carries_the_step_and_own_status_rules(type_name):
    status = _described_field(type_name, "status")
    assert status["choices"] == list(catalog.STATUSES)
    assert status["own_status_choices"] == ["PENDING", "RUNNING", "PAUSED"]
    assert _described_field(type_name, "task_id")["marks_step"] is True


def test_describe_says_task_id_is_required_inside_a_workflow():
    assert _described_field("task_status", "task_id")["required_in"] == ["workflow"]
    assert "required_in" not in _described_field("agent_status", "task_id")


@pytest.mark.parametrize(
    "name, sets_status_of",
    [
        ("workflow_status", ["workflow"]),
        ("agent_status", ["agent"]),
        ("task_status", ["task"]),
        ("complete", ["workflow", "agent", "task"]),
        ("error", ["workflow", "agent", "task"]),
        ("tool_call", []),
        ("warning", []),
    ],
)
def test_describe_says_which_events_set_the_status(name, sets_status_of):
    assert _described(name)["sets_status_of"] == sets_status_of


def test_describe_says_structured_delta_needs_an_output_schema():
    assert [t["type"] for t in catalog.describe()["types"] if t["requires_output_schema"]] == ["structured_delta"]


def test_describe_says_complete_output_is_schema_checked():
    assert _described_field("complete", "output") == {
        "name": "output",
        "type": "any",
        "required": False,
        "schema_checked": True,
    }


def test_describe_nests_the_error_object():
    assert _described_field("error", "error")["fields"] == [
        {"name": "message", "type": "string", "required": True},
        {"name": "code", "type": "string", "required": False},
    ]


def test_terminal_types_come_from_the_table():
    assert catalog.TERMINAL_TYPES == ("complete", "error")


def test_execution_rules_are_found_by_name():
    assert catalog.CATALOG["structured_delta"].sequence_field == "sequence"
    assert catalog.CATALOG["complete"].schema_checked_fields == ("output",)
    assert catalog.CATALOG["warning"].sequence_field is None
    assert catalog.CATALOG["warning"].schema_checked_fields == ()


@pytest.mark.parametrize("kind", ["agent", "task"])
def test_structured_delta_without_an_output_schema_is_refused(kind):
    delta = {"content": 1, "sequence": 1}
    message = "structured_delta needs an execution with an output_schema"
    with pytest.raises(Invalid, match=message):
        validate_event(kind, "structured_delta", delta, has_output_schema=False)
    validate_event(kind, "structured_delta", delta, has_output_schema=True)
    validate_event(kind, "structured_delta", delta)


@pytest.mark.parametrize(
    "last, sequence, message",
    [
        (0, 1, None),
        (4, 5, None),
        (0, 2, "structured_delta.data.sequence must be 1, got 2"),
        (1, 1, "structured_delta.data.sequence must be 2, got 1"),
        (1, 3, "structured_delta.data.sequence must be 2, got 3"),
        (0, 0, "structured_delta.data.sequence must be at least 1"),
    ],
)
def test_sequence_grows_by_one_from_the_last(last, sequence, message):
    data = {"content": 1, "sequence": sequence}
    if message is None:
        validate_event("agent", "structured_delta", data, last_sequence=last)
    else:
        with pytest.raises(Invalid) as info:
            validate_event("agent", "structured_delta", data, last_sequence=last)
        assert info.value.message == message


def test_sequence_is_not_checked_without_the_last_one():
    validate_event("agent", "structured_delta", {"content": 1, "sequence": 9})


@pytest.mark.parametrize(
    "type_name, field",
    [(e.name, f.name) for e in catalog.CATALOG.values() if e.durable for f in e.fields if f.required],
)
def test_every_required_field_in_the_table_is_enforced(type_name, field):
    example = catalog.CATALOG[type_name].example
    data = {k: v for k, v in example.data.items() if k != field}
    assert _invalid(example.kind, type_name, data) == f"{type_name}.data.{field} is required"


@pytest.mark.parametrize(
    "type_name, field, choices",
    [(e.name, f.name, f.choices) for e in catalog.CATALOG.values() if e.durable for f in e.fields if f.choices],
)
def test_every_choice_list_in_the_table_is_enforced(type_name, field, choices):
    example = catalog.CATALOG[type_name].example
    message = _invalid(example.kind, type_name, {**example.data, field: "NOT_A_CHOICE"})
    assert message == f"{type_name}.data.{field} must be one of {', '.join(choices)}"
