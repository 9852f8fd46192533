"""The tests' SSE reader: frames over ``streamapp.sse``, the one parser, and a live ``Stream``."""

from __future__ import annotations

import dataclasses
import json
import time
import typing as t

import requests

from streamapp import sse


@dataclasses.dataclass
class Frame:
    """An event frame as the tests look at it; a ``retry:`` value arrives as a frame of its own."""

    event: str = "message"
    data: str = ""
    id: str | None = None  # this frame's own ``id:`` field, never an inherited one
    retry: int | None = None

    @property
    def json(self) -> t.Any:
        return json.loads(self.data)


def parse(raw: bytes) -> tuple[list[Frame], list[str]]:
    """Parse a whole stream body into event frames and comments (``retry`` frames left out)."""
    frames, comments = [], []
    reader = Reader()
    for item in reader.feed(raw) + reader.feed(b"", final=True):
        if isinstance(item, str):
            comments.append(item)
        elif item.retry is None:
            frames.append(item)
    return frames, comments


class Reader:
    """Incremental parser: feed bytes, get frames (and comment strings) back.

    A thin adapter over ``streamapp.sse.Decoder``, so the tests read streams
    with the same parser as the client.
    """

    def __init__(self) -> None:
        self.decoder = sse.Decoder()

    def feed(self, chunk: bytes, final: bool = False) -> list[t.Any]:
        items = self.decoder.feed(chunk)
        if final:
            items += self.decoder.close()
        return [_adapt(item) for item in items]


def _adapt(item: sse.Item) -> Frame | str:
    if isinstance(item, sse.Comment):
        return item.text.strip()
    if isinstance(item, sse.Retry):
        return Frame(retry=item.ms)
    return Frame(event=item.type, data=item.data, id=item.id)


class Stream:
    """An open stream over real HTTP, read frame by frame with a deadline."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, params: dict[str, t.Any] | None = None):
        self.response = requests.get(url, headers=headers or {}, params=params, stream=True, timeout=(5, 30))
        self.reader = Reader()
        self.pending: list[t.Any] = []
        self._chunks = self.response.iter_content(chunk_size=None)
        self.ended = False

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()

    def next_item(self, deadline_s: float = 10.0) -> t.Any:
        end = time.monotonic() + deadline_s
        while not self.pending:
            if time.monotonic() > end:
                raise TimeoutError("no frame before the deadline")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.ended = True
                self.pending.extend(self.reader.feed(b"", final=True))
                if not self.pending:
                    raise EOFError("the stream ended") from None
                break
            self.pending.extend(self.reader.feed(chunk))
        return self.pending.pop(0)

    def next_frame(self, deadline_s: float = 10.0) -> Frame:
        """The next event frame; comments (pings) do not extend the deadline."""
        end = time.monotonic() + deadline_s
        while True:
            item = self.next_item(max(0.0, end - time.monotonic()))
            if isinstance(item, Frame) and item.retry is None:
                return item

    def frames_until(self, predicate: t.Callable[[Frame], bool], deadline_s: float = 10.0) -> list[Frame]:
        frames = []
        while True:
            frame = self.next_frame(deadline_s)
            frames.append(frame)
            if predicate(frame):
                return frames

    def ends_within(self, seconds: float) -> None:
        """Read until the server ends the stream; fail if it is still open after ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.next_item(max(0.1, end - time.monotonic()))
            except EOFError:
                return
            except TimeoutError:
                break
        raise AssertionError(f"stream still open after {seconds} s")

    def rest(self) -> list[Frame]:
        """Every remaining frame until the server ends the stream."""
        frames = []
        while True:
            try:
                frames.append(self.next_frame())
            except EOFError:
                return frames
