"""The ``events=`` filter of a stream and its cursor: which frames of a batch it sends (SPEC §5).

One function, :func:`select`, decides for both delivery paths: a stream's own
generator (replay and queued live items) and the hub's direct writes, so the
two cannot disagree about a frame. Pure: no I/O, no Flask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .catalog import TERMINAL_TYPES

#: ``(event id or None for a text chunk, type, framed bytes)``
Item = tuple[int | None, str, bytes]


def wanted(types: frozenset[str] | None, type_name: str) -> bool:
    """Whether a stream filtering on ``types`` sends ``type_name``; terminal events always go (SPEC §5)."""
    return types is None or type_name in types or type_name in TERMINAL_TYPES


@dataclasses.dataclass(frozen=True, slots=True)
class Selected:
    """What one batch gives a stream: its frames, its cursor after them, whether the terminal
    event was among them, and how many frames of each type (counted once they are written)."""

    frames: list[bytes]
    last: int
    ended: bool
    types: dict[str, int]

    @property
    def data(self) -> bytes:
        return b"".join(self.frames)

    @property
    def count(self) -> int:
        return sum(self.types.values())


def select(items: Iterable[Item], last: int, types: frozenset[str] | None) -> Selected:
    """The frames of ``items`` a stream at cursor ``last`` that filters on ``types`` sends.

    Durable events at or below the cursor were sent already (replay and live
    overlap by design) and are skipped; the cursor moves past filtered-out
    events too. Text chunks have no id and never move it. Nothing after the
    terminal event is sent: the stream ends there.
    """
    frames: list[bytes] = []
    counts: dict[str, int] = {}
    for event_id, type_name, frame in items:
        if event_id is not None:
            if event_id <= last:
                continue
            last = event_id
        if wanted(types, type_name):
            frames.append(frame)
            counts[type_name] = counts.get(type_name, 0) + 1
        if event_id is not None and type_name in TERMINAL_TYPES:
            return Selected(frames, last, True, counts)
    return Selected(frames, last, False, counts)
