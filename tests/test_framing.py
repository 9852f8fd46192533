"""SSE framing: inputs against exact bytes (SPEC §5)."""

from __future__ import annotations

import pytest

from streamapp import framing


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
