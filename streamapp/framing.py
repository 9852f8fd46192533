"""Server-Sent Events framing: pure functions that return bytes (SPEC §5).

A payload can never end a frame early or inject a field: every CR, LF and
CRLF inside data starts a new ``data:`` line, and an event name or comment
that could break the frame is refused rather than quietly cleaned (STYLE §4).
"""

from __future__ import annotations

import re

from .catalog import TYPE_PATTERN

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_NEEDS_SPLIT = re.compile(r"[\r\n]")


def _data_lines(data: str) -> bytes:
    if not _NEEDS_SPLIT.search(data):
        return b"data: " + data.encode() + b"\n"
    return b"".join(b"data: " + line.encode() + b"\n" for line in _LINE_BREAK.split(data))


def _check_event(event: str) -> None:
    if not TYPE_PATTERN.fullmatch(event):
        raise ValueError(f"event name {event!r} does not match {TYPE_PATTERN.pattern}")


def event_frame(event_id: int | None, event: str, data: str) -> bytes:
    """Frame one event: ``id:`` (unless ``None``), ``event:``, ``data:`` lines, blank line.

    :raises ValueError: for an event name outside the catalog pattern or a negative id.
    """
    _check_event(event)
    head = b""
    if event_id is not None:
        if event_id < 0:
            raise ValueError("event id must be non-negative")
        head = b"id: %d\n" % event_id
    return head + b"event: " + event.encode() + b"\n" + _data_lines(data) + b"\n"


def stored_event_frame(event_id: int, event: str, envelope: str) -> bytes:
    """Frame a stored envelope; types and ids were validated when it was stored.

    ``storage.frames_after`` has PostgreSQL write these same bytes (tests hold the two equal).

    The envelope is ``json.dumps`` output, which escapes every control
    character, so it is one ``data:`` line; the general path still guards it.
    """
    if _NEEDS_SPLIT.search(envelope):
        return event_frame(event_id, event, envelope)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), envelope.encode())


def with_token(frame: bytes, token: bytes) -> bytes:
    """``frame`` with ``token`` as its ``id:`` in place of its own id (multiplexed streams, SPEC §5.6).

    A token is URL-safe characters only (``cursor.py``): it cannot break the frame.
    """
    if frame.startswith(b"id: "):
        frame = frame[frame.index(b"\n") + 1 :]
    return b"id: " + token + b"\n" + frame


def comment(text: str) -> bytes:
    """A comment line (``: text``), ignored by clients; used for pings.

    :raises ValueError: if the text holds a line break.
    """
    if _NEEDS_SPLIT.search(text):
        raise ValueError("a comment cannot contain a line break")
    return b": " + text.encode() + b"\n\n"


def retry(ms: int) -> bytes:
    """The ``retry:`` field telling the client how long to wait before reconnecting."""
    if ms < 0:
        raise ValueError("retry must be non-negative")
    return b"retry: %d\n\n" % ms


def prelude(retry_ms: int) -> bytes:
    """First bytes of every stream, flushed before any database work (SPEC §5)."""
    return retry(retry_ms) + comment("connected")


PING = comment("ping")
