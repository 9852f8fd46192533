"""The ``events=`` filter and the cursor (SPEC §5): one function for both delivery paths."""

from __future__ import annotations

import pytest

from streamapp import framing
from streamapp.event_filter import select
from streamapp.event_filter import wanted


def _event(event_id: int, type_name: str) -> tuple[int, str, bytes]:
    return event_id, type_name, framing.event_frame(event_id, type_name, "{}")


def _chunk(text: str) -> tuple[None, str, bytes]:
    return None, "llm_chunk", framing.event_frame(None, "llm_chunk", text)


BATCH = [_event(1, "workflow_start"), _event(2, "warning"), _chunk("hi"), _event(3, "complete"), _event(4, "warning")]


@pytest.mark.parametrize(
    "last, types, sent, cursor, ended",
    [
        (0, None, [1, 2, None, 3], 3, True),  # nothing after the terminal event
        (0, frozenset({"warning"}), [2, 3], 3, True),  # the terminal event always goes
        (0, frozenset({"llm_chunk"}), [None, 3], 3, True),
        (2, None, [None, 3], 3, True),  # at or below the cursor: sent already
        (3, None, [None, 4], 4, False),
        (5, frozenset({"workflow_start"}), [], 5, False),
    ],
)
def test_select(last, types, sent, cursor, ended):
    selected = select(BATCH, last, types)
    by_frame = {frame: event_id for event_id, _, frame in BATCH}
    assert [by_frame[frame] for frame in selected.frames] == sent
    assert (selected.last, selected.ended) == (cursor, ended)
    assert selected.data == b"".join(selected.frames)
    assert selected.count == len(sent)


def test_select_counts_frames_by_type():
    selected = select(BATCH, 0, frozenset({"warning", "llm_chunk"}))
    assert selected.types == {"warning": 1, "llm_chunk": 1, "complete": 1}


def test_filtered_out_events_still_move_the_cursor():
    """A reconnect must not replay what the filter skipped (its id is behind the cursor)."""
    assert select(BATCH[:2], 0, frozenset({"complete"})).last == 2


@pytest.mark.parametrize(
    "types, type_name, expected",
    [
        (None, "anything", True),
        (frozenset({"warning"}), "warning", True),
        (frozenset({"warning"}), "llm_chunk", False),
        (frozenset({"warning"}), "complete", True),
        (frozenset({"warning"}), "error", True),
    ],
)
def test_wanted(types, type_name, expected):
    assert wanted(types, type_name) is expected
