"""SSE framing: inputs against exact bytes, and any input parsed back by the one parser (SPEC §5)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from streamapp import framing
from streamapp import sse
from streamapp.catalog import TYPE_PATTERN


@pytest.mark.parametrize(
    "data, lines",
    [
        ("plain", b"data: plain\n"),
        ("", b"data: \n"),
        ("a\nb", b"data: a\ndata: b\n"),
        ("a\rb", b"data: a\ndata: b\n"),
        ("a\r\nb", b"data: a\ndata: b\n"),
        ("ends with CR\r", b"data: ends with CR\ndata: \n"),
        ("ends with LF\n", b"data: ends with LF\ndata: \n"),
        ("\n", b"data: \ndata: \n"),
        ("\r\n\r\n", b"data: \ndata: \ndata: \n"),
        ("a\n\nb", b"data: a\ndata: \ndata: b\n"),
        ("a\n\rb", b"data: a\ndata: \ndata: b\n"),
        ("a\r\r\nb", b"data: a\ndata: \ndata: b\n"),
        (
            "x\n\nevent: complete\nid: 9",
            b"data: x\ndata: \ndata: event: complete\ndata: id: 9\n",
        ),
        ("data: fake\r\n\r\nid: 5", b"data: data: fake\ndata: \ndata: id: 5\n"),
        ("retry: 1\n: comment", b"data: retry: 1\ndata: : comment\n"),
        ("h\u00e9llo \u2713 \U0001f600", "data: h\u00e9llo \u2713 \U0001f600\n".encode()),
        ("\u2028 and \u0085 are not SSE line breaks", "data: \u2028 and \u0085 are not SSE line breaks\n".encode()),
    ],
)
def test_event_frame_splits_data_on_cr_lf_crlf(data, lines):
    assert framing.event_frame(7, "tool_call", data) == b"id: 7\nevent: tool_call\n" + lines + b"\n"


def test_event_frame_without_id_has_no_id_line():
    assert framing.event_frame(None, "llm_chunk", "hi") == b"event: llm_chunk\ndata: hi\n\n"


def test_event_frame_id_zero():
    assert framing.event_frame(0, "stream_reset", "{}") == b"id: 0\nevent: stream_reset\ndata: {}\n\n"


def test_event_frame_refuses_negative_id():
    with pytest.raises(ValueError):
        framing.event_frame(-1, "warning", "x")


@pytest.mark.parametrize(
    "event",
    ["", "Bad", "1abc", "_x", "a-b", "a b", "a.b", "a\nb", "complete\n", "x\r", "\u00e9t\u00e9", "x" * 65],
)
def test_event_frame_refuses_names_outside_the_pattern(event):
    with pytest.raises(ValueError):
        framing.event_frame(1, event, "{}")


@pytest.mark.parametrize("event", ["a", "x" * 64, "workflow_status", "step2", "a_1_b"])
def test_event_frame_accepts_names_in_the_pattern(event):
    assert framing.event_frame(1, event, "") == b"id: 1\nevent: " + event.encode() + b"\ndata: \n\n"


@pytest.mark.parametrize(
    "envelope, expected",
    [
        ('{"id":3}', b'id: 3\nevent: complete\ndata: {"id":3}\n\n'),
        ('{"s":"\u00e9"}', 'id: 3\nevent: complete\ndata: {"s":"\u00e9"}\n\n'.encode()),
        ("", b"id: 3\nevent: complete\ndata: \n\n"),
        ('{"a":\n1}', b'id: 3\nevent: complete\ndata: {"a":\ndata: 1}\n\n'),
        ("x\r\n\r\nid: 9", b"id: 3\nevent: complete\ndata: x\ndata: \ndata: id: 9\n\n"),
    ],
)
def test_stored_event_frame(envelope, expected):
    assert framing.stored_event_frame(3, "complete", envelope) == expected


def test_stored_event_frame_matches_event_frame():
    envelope = '{"id":12,"type":"warning","data":{"code":"c","message":"m"}}'
    assert framing.stored_event_frame(12, "warning", envelope) == framing.event_frame(12, "warning", envelope)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ping", b": ping\n\n"),
        ("connected", b": connected\n\n"),
        ("", b": \n\n"),
        ("caf\u00e9", ": caf\u00e9\n\n".encode()),
    ],
)
def test_comment(text, expected):
    assert framing.comment(text) == expected


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\r\nb", "trailing\n", "\r"])
def test_comment_refuses_line_breaks(text):
    with pytest.raises(ValueError):
        framing.comment(text)


@pytest.mark.parametrize("ms, expected", [(0, b"retry: 0\n\n"), (3000, b"retry: 3000\n\n")])
def test_retry(ms, expected):
    assert framing.retry(ms) == expected


def test_retry_refuses_negative():
    with pytest.raises(ValueError):
        framing.retry(-1)


def test_prelude_is_retry_then_connected_comment():
    assert framing.prelude(1500) == b"retry: 1500\n\n: connected\n\n"


def test_ping_constant():
    assert framing.PING == b": ping\n\n"


# -- any event, any data: frames parse back to the same event (issue 11) ---------------------------

_TYPES = st.from_regex(TYPE_PATTERN, fullmatch=True)
_IDS = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
# Every character a str can hold in UTF-8, line breaks of all kinds and control characters included.
_BREAKS = st.lists(st.sampled_from(["\r", "\n", "\r\n", "x", ":", " ", "\x00", "data: x", "id: 9"])).map("".join)
_DATA = st.text(st.characters(codec="utf-8")) | _BREAKS
_EVENTS = st.lists(st.tuples(_IDS, _TYPES, _DATA), min_size=1, max_size=5)


def _as_sent(data: str) -> str:
    """What SSE promises a reader: every CR, LF or CRLF in data arrives as LF."""
    return re.sub(r"\r\n|\r", "\n", data)


def _decoded(raw: bytes, cuts: list[int]) -> list[sse.Message]:
    """Decode ``raw`` fed in pieces cut at ``cuts``: a CRLF may be split between two reads."""
    decoder = sse.Decoder()
    items, start = [], 0
    for cut in sorted({c % (len(raw) + 1) for c in cuts}) + [len(raw)]:
        items += decoder.feed(raw[start:cut])
        start = cut
    return [item for item in items + decoder.close() if isinstance(item, sse.Message)]


@settings(max_examples=200, deadline=None)
@given(_EVENTS, st.lists(st.integers(min_value=0), max_size=8))
def test_any_events_parse_back_to_the_same_events(events, cuts):
    raw = framing.prelude(3000) + b"".join(framing.event_frame(i, typ, data) + framing.PING for i, typ, data in events)
    messages = _decoded(raw, cuts)
    assert [(m.id, m.type, m.data) for m in messages] == [
        (None if i is None else str(i), typ, _as_sent(data)) for i, typ, data in events
    ]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(st.characters(codec="utf-8")),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=2**63 - 1), _TYPES, _JSON, st.lists(st.integers(min_value=0), max_size=4))
def test_any_stored_envelope_parses_back_to_the_same_json(event_id, type_name, data, cuts):
    envelope = json.dumps({"id": event_id, "type": type_name, "data": data}, ensure_ascii=False)
    (message,) = _decoded(framing.prelude(0) + framing.stored_event_frame(event_id, type_name, envelope), cuts)
    assert (message.id, message.type, message.data) == (str(event_id), type_name, envelope)
    assert json.loads(message.data)["data"] == data


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_no_other_event_name_is_framed(name):
    if TYPE_PATTERN.fullmatch(name):
        assert framing.event_frame(None, name, "").startswith(b"event: " + name.encode() + b"\n")
    else:
        with pytest.raises(ValueError):
            framing.event_frame(None, name, "")
