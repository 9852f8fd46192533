"""Output schemas: valid documents only, every $ref resolved inside, outputs judged by the validator."""

from __future__ import annotations

import pytest

from streamapp.errors import Invalid
from streamapp.output_schema import check_schema
from streamapp.output_schema import check_value

WORD = {"$defs": {"word": {"type": "string"}}, "properties": {"answer": {"$ref": "#/$defs/word"}}}


@pytest.mark.parametrize(
    "schema", [True, False, {}, {"type": "object"}, WORD, {"definitions": {"a": {}}, "$ref": "#/definitions/a"}]
)
def test_valid_schemas_are_accepted(schema):
    check_schema(schema)


@pytest.mark.parametrize(
    "schema, fragment",
    [
        ({"type": "nonsense"}, "not a valid JSON Schema"),
        ({"$ref": "#/definitions/missing"}, "does not resolve inside the schema"),
        ({"items": {"$ref": "https://example.com/other.json"}}, "does not resolve inside the schema"),
        ("object", "must be a JSON Schema"),
        (None, "must be a JSON Schema"),
        ([{"type": "string"}], "must be a JSON Schema"),
    ],
)
def test_bad_schemas_are_refused_with_a_reason(schema, fragment):
    with pytest.raises(Invalid) as caught:
        check_schema(schema)
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    "schema, data, error",
    [
        (WORD, {"output": {"answer": "yes"}}, None),
        (WORD, {"output": {"answer": 3}}, "3 is not of type 'string'"),
        (False, {"output": 1}, "False schema does not allow 1"),
        (WORD, {}, None),  # nothing to check
        (None, {"output": 1}, None),  # no schema: text mode
        ({"$ref": "#/nowhere"}, {"output": 1}, "unresolvable $ref"),  # stored before refs were checked
    ],
)
def test_values_are_judged_by_the_validator(schema, data, error):
    if error is None:
        check_value("here", schema, data, "output")
        return
    with pytest.raises(Invalid) as caught:
        check_value("here", schema, data, "output")
    assert caught.value.message.startswith("here") and error in caught.value.message
