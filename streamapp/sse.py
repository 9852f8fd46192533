"""The one strict SSE parser: bytes in, messages, comments and retry values out (no I/O).

It follows the WHATWG "interpreting an event stream" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- Lines end only at CR, LF or CRLF (never ``str.splitlines``, which also splits at
  U+2028, VT, FF…). A CR at the end of one chunk waits for the next chunk, which
  may start with the LF of the same CRLF (STYLE "Client").
- A UTF-8 BOM at the very start of the stream is dropped; bytes that are not
  UTF-8 become U+FFFD.
- ``data`` lines are joined with LF; ``event`` names the type (``message`` when
  absent or empty); ``retry`` with only ASCII digits sets the reconnection time;
  ``id`` sets the last event id unless its value contains NUL; other fields are
  ignored; a line starting with ``:`` is a comment.
- A blank line dispatches the block, unless it had no ``data`` line: such a block
  is not a message, but its ``id`` and ``retry`` fields still count.
- At the end of the stream, an unfinished line and an undispatched block are
  discarded.

Deliberate additions to what a browser exposes, because the Python client needs
them (SPEC §5): comments are returned (``: ping`` heartbeats show a quiet stream
is alive), ``retry`` values are returned as they arrive, and each message says
whether its own block carried an ``id:`` field (``Message.id``) apart from the
inherited last event id (``Message.last_event_id``): text chunks have no ``id:``
and must not be de-duplicated by an id they merely inherited.
"""

from __future__ import annotations

import dataclasses
import re

# CR, LF and CRLF only (SPEC §5.1). Either byte can only be itself in UTF-8, so
# bytes may be split into lines before they are decoded.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")
_BOM = "\ufeff"


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A dispatched event: the block had at least one ``data`` line."""

    type: str
    data: str
    #: The value of this block's own ``id:`` field; None when the block had none
    #: (or only one containing NUL, which is ignored).
    id: str | None
    #: The last event id in force at dispatch, inherited from earlier blocks.
    last_event_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Comment:
    """A line starting with ``:``; ``text`` is the rest, less one leading space."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """A valid ``retry:`` field: the reconnection time in milliseconds."""

    ms: int


Item = Message | Comment | Retry


class Decoder:
    """Incremental event-stream decoder: ``feed`` bytes as they arrive, ``close`` at the end.

    Items come back in stream order: a comment or a retry value as soon as its
    line is complete, a message when the blank line ending its block arrives.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._data: list[str] = []
        self._type = ""
        self._block_id: str | None = None
        #: The WHATWG "last event ID buffer": survives blocks without ``id:``.
        self.last_event_id = ""
        #: The newest reconnection time the stream set, in milliseconds.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Item]:
        """The items completed by ``chunk``."""
        buffer = self._buffer + chunk if self._buffer else chunk
        # What was buffered holds no line end, except maybe a final CR.
        scan_from = max(0, len(self._buffer) - 1)
        out: list[Item] = []
        start = 0
        for match in _LINE_END.finditer(buffer, scan_from):
            if match.end() == len(buffer) and match.group() == b"\r":
                break  # maybe the first half of a CRLF split across chunks
            self._line(buffer[start : match.start()], out)
            start = match.end()
        self._buffer = buffer[start:]
        return out

    def close(self) -> list[Item]:
        """End of stream: a final lone CR still ends its line; anything unfinished is dropped."""
        out: list[Item] = []
        if self._buffer.endswith(b"\r"):
            self._line(self._buffer[:-1], out)
        self._buffer = b""
        self._data, self._type, self._block_id = [], "", None
        return out

    def _line(self, raw: bytes, out: list[Item]) -> None:
        line = raw.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            line = line.removeprefix(_BOM)
        if not line:
            self._dispatch(out)
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if not name:
            out.append(Comment(value))
        elif name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._block_id = value
        elif name == "retry":
            if _DIGITS.fullmatch(value):
                self.retry = int(value)
                out.append(Retry(self.retry))

    def _dispatch(self, out: list[Item]) -> None:
        if self._data:
            out.append(Message(self._type or "message", "\n".join(self._data), self._block_id, self.last_event_id))
        self._data, self._type, self._block_id = [], "", None


def decode(raw: bytes) -> list[Item]:
    """Every item of a whole stream body."""
    decoder = Decoder()
    return decoder.feed(raw) + decoder.close()
