"""Text chunks in process: split into NOTIFY payloads and put together again (SPEC §4, §5.2); the
streams that carry them are tested against a live gunicorn in tests/live/test_chunks.py."""

from __future__ import annotations

import pytest

from streamapp.chunks import Reassembler
from streamapp.chunks import payloads
from streamapp.chunks import split


@pytest.mark.parametrize("size", [1, 7800, 7801, 20_000, 100_000])
def test_split_and_reassemble_round_trip(size):
    text = ("ab€" * size)[:size]
    parts = payloads("e1", "p.0", text)
    assert all(len(p.encode()) < 8000 for p in parts)
    joiner = Reassembler()
    results = [joiner.feed(p) for p in reversed(parts)]
    assert results[-1] == ("e1", text) and all(r is None for r in results[:-1])
    assert "".join(split(text)) == text
