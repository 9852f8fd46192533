"""The one SSE parser against exact bytes (WHATWG event-stream interpretation, SPEC §5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamapp import framing
from streamapp import sse
from streamapp.sse import Comment
from streamapp.sse import Message
from streamapp.sse import Retry


def M(data: str, type: str = "message", id: str | None = None, last: str = "") -> Message:  # noqa: A002
    return Message(type, data, id, last if last or id is None else id)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Line ends: LF, CR, CRLF, and all three mixed in one stream.
        (b"data: a\n\n", [M("a")]),
        (b"data: a\r\r", [M("a")]),
        (b"data: a\r\n\r\n", [M("a")]),
        (b"data: a\rdata: b\r\ndata: c\n\r\n", [M("a\nb\nc")]),
        # Data lines joined with LF; one leading space removed, no more.
        (b"data:a\ndata:  b\n\n", [M("a\n b")]),
        (b"data\n\n", [M("")]),
        (b"data:\ndata:\n\n", [M("\n")]),
        (b"data: x:y: z\n\n", [M("x:y: z")]),
        # Event names; empty means "message".
        (b"event: tool_call\ndata: {}\n\n", [M("{}", "tool_call")]),
        (b"event:\ndata: a\n\n", [M("a")]),
        (b"event: a\nevent: b\ndata: x\n\n", [M("x", "b")]),
        # Ids: this block's own, inherited, NUL ignored, empty resets.
        (b"id: 7\ndata: a\n\n", [M("a", id="7")]),
        (b"id: 7\ndata: a\n\nevent: llm_chunk\ndata: t\n\n", [M("a", id="7"), M("t", "llm_chunk", None, "7")]),
        (b"id: 7\ndata: a\n\nid: 8\x009\ndata: b\n\n", [M("a", id="7"), M("b", id=None, last="7")]),
        (b"id: 7\ndata: a\n\nid\ndata: b\n\n", [M("a", id="7"), M("b", id="", last="")]),
        # Blocks without data dispatch nothing, but their id still counts.
        (b"id: 3\n\ndata: a\n\n", [M("a", id=None, last="3")]),
        (b"event: x\n\n\n\n", []),
        # retry: only ASCII digits count, at once, as their own item.
        (b"retry: 3000\n\n: connected\n\n", [Retry(3000), Comment("connected")]),
        (b"retry: 3000x\n\nretry: -1\n\nretry: \xd9\xa3\n\nretry:\n\n", []),
        (b"retry: 5\ndata: a\n\n", [Retry(5), M("a")]),
        # Comments, with or without a space; unknown fields ignored.
        (b": ping\n\n:x\n:\n", [Comment("ping"), Comment("x"), Comment("")]),
        (b"foo: bar\nDATA: no\nData: no\ndata : no\ndata: yes\n\n", [M("yes")]),
        # A BOM only at the very start; bad UTF-8 becomes U+FFFD.
        (b"\xef\xbb\xbfdata: a\n\n", [M("a")]),
        (b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [M("a")]),
        (b"data: \xff\xfe\n\n", [M("\ufffd\ufffd")]),
        # Only CR, LF, CRLF end lines: not U+2028, NEL, VT or FF.
        ("data: a\u2028b\u0085c\x0bd\x0ce\n\n".encode(), [M("a\u2028b\u0085c\x0bd\x0ce")]),
        # An unfinished block or line at the end is dropped.
        (b"data: a\n\ndata: b\n", [M("a")]),
        (b"data: a\n\ndata: b", [M("a")]),
        # ... but a final lone CR still ends its line.
        (b"data: a\n\r", [M("a")]),
    ],
)
def test_decode(raw, expected):
    assert sse.decode(raw) == expected


def test_a_cr_at_the_end_of_a_chunk_waits_for_the_next():
    decoder = sse.Decoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF: one line end, not an empty line that would dispatch.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\r") == []  # still maybe half a CRLF
    assert decoder.feed(b"x") == [M("a\nb")]


def test_a_cr_then_anything_else_ends_the_line():
    decoder = sse.Decoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b": c\n") == [M("a"), Comment("c")]


def test_a_bom_split_across_chunks_is_still_dropped():
    decoder = sse.Decoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb\xbfdata: a\n\n") == [M("a")]


def test_decoder_state_after_a_stream():
    decoder = sse.Decoder()
    decoder.feed(b"retry: 250\n\nid: 4\ndata: a\n\nevent: llm_chunk\ndata: t\n\n")
    assert (decoder.retry, decoder.last_event_id) == (250, "4")


@pytest.mark.parametrize(
    "data", ["a", "a\nb", "a\rb", "a\r\nb", "ends with CR\r", "\r\n\r\n", "x\n\nevent: complete\nid: 9\ndata: z", ""]
)
def test_round_trip_through_the_server_framing(data):
    """What framing.py writes, the parser reads back: CR and CRLF come back as LF."""
    frames = framing.event_frame(12, "tool_call", data) + framing.event_frame(None, "llm_chunk", data)
    raw = framing.prelude(3000) + frames
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert sse.decode(raw) == [
        Retry(3000),
        Comment("connected"),
        M(expected, "tool_call", "12"),
        M(expected, "llm_chunk", None, "12"),
    ]


_STREAM = (
    b"\xef\xbb\xbfretry: 3000\r\n\r\n: connected\n\nid: 1\r\nevent: a\r\ndata: x\r\ndata: y\r\n\r\n"
    b"event: llm_chunk\rdata: t\r\r: ping\n\nid: 2\nevent: complete\ndata: {}\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12))
def test_any_chunking_gives_the_same_items(cuts):
    decoder, items, start = sse.Decoder(), [], 0
    for cut in sorted(cuts) + [len(_STREAM)]:
        items += decoder.feed(_STREAM[start:cut])
        start = cut
    assert items + decoder.close() == sse.decode(_STREAM)


@given(st.text())
def test_any_text_survives_framing_and_parsing(text):
    raw = framing.event_frame(None, "llm_chunk", text)
    [message] = sse.decode(raw)
    assert message.data == text.replace("\r\n", "\n").replace("\r", "\n")
