"""How deeply JSON nests, found without recursion (SPEC §2 "Robustness", issue 11)."""

from __future__ import annotations

import json
import typing as t

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from streamapp import nesting
from streamapp.errors import Invalid


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ('"[[[["', 0),
        ("{}", 1),
        ("[]", 1),
        ('{"a": [1]}', 2),
        ("[[], [[]], []]", 3),
        ('["\\"[[[[", {}]', 2),  # an escaped quote does not end the string
        ('["\\\\", [[]]]', 3),  # an escaped backslash does: the brackets after it count
        ('["\\\\\\"[[", []]', 2),
        ('["a\\\n[", []]', 2),  # a backslash escapes a line end too
        ('{"a]}": "{[", "b": {"c": "]"}}', 2),
        ("[" * 5, 5),  # unterminated: counted as far as it goes
        ('["[', 1),  # a string left open hides the rest, as a decoder stops there
        ('[1, "x\\', 1),
        ("]]][[", 2),  # a stray closing bracket never takes the count below zero
    ],
)
def test_text_depth_counts_every_object_or_array_outside_strings(text, depth):
    assert nesting.text_depth(text, limit=100) == depth


def test_text_depth_stops_counting_past_the_limit():
    assert nesting.text_depth("[" * 1_000_000, limit=64) == 65


@pytest.mark.parametrize(
    "text, deeper",
    [("[]", False), ("[" * 64 + "]" * 64, False), ("[" * 65 + "]" * 65, True), ('["' + "[" * 100 + '"]', False)],
)
def test_deeper_than(text, deeper):
    assert nesting.deeper_than(text, 64) is deeper


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None, exclude_categories=())),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


def _depth_of(value: t.Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth_of(v) for v in value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(_JSON, st.booleans(), st.integers(min_value=0, max_value=4))
def test_text_depth_matches_the_parsed_value(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent or None)
    assert nesting.text_depth(text, limit=1000) == _depth_of(value)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_check_value_agrees_with_the_text(value):
    depth = _depth_of(value)
    nesting.check_value(value, max(depth, 1), "data")
    if depth:
        with pytest.raises(Invalid, match=f"data is nested deeper than {depth - 1} levels"):
            nesting.check_value(value, depth - 1, "data")


def test_check_value_refuses_a_value_that_holds_itself():
    loop: list[t.Any] = []
    loop.append({"again": loop})
    with pytest.raises(Invalid, match="64"):
        nesting.check_value(loop, 64, "data")


def test_check_value_takes_tuples_as_arrays():
    value: t.Any = 1
    for _ in range(65):
        value = (value,)
    with pytest.raises(Invalid):
        nesting.check_value(value, 64, "data")
