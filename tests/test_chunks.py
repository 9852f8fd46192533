"""Text chunks in process: split into NOTIFY payloads and put together again (SPEC §4, §5.2); the
streams that carry them are tested against a live gunicorn in tests/live/test_chunks.py."""

from __future__ import annotations

import pytest

from streamapp.chunks import Reassembler
from streamapp.chunks import parse_payload
from streamapp.chunks import payloads
from streamapp.chunks import split
from streamapp.errors import Conflict
from streamapp.errors import Invalid
from streamapp.errors import NotFound
from streamapp.errors import Unavailable
from streamapp.producer import Producer
from streamapp.redact import Redactor


@pytest.mark.parametrize("size", [1, 7800, 7801, 20_000, 100_000])
def test_split_and_reassemble_round_trip(size):
    text = ("ab€" * size)[:size]
    parts = payloads("e1", "p.0", text)
    assert all(len(p.encode()) < 8000 for p in parts)
    joiner = Reassembler()
    results = [joiner.feed(p) for p in reversed(parts)]
    assert results[-1] == ("e1", text) and all(r is None for r in results[:-1])
    assert "".join(split(text)) == text


# -- chunks through the producer (the HTTP view, the demo and Python producers share it) --------


def test_producer_chunks_are_refused_as_the_api_refuses_them(db, producer, account):
    exec_id = producer.create_execution("agent", "a", account.user.get_id())["exec_id"]
    with pytest.raises(Invalid, match=r"texts\[1\]"):
        producer.publish_chunks(exec_id, ["ok", ""])
    with pytest.raises(NotFound):
        producer.publish_chunks(exec_id, ["ok"], kind="task")
    with pytest.raises(Unavailable):
        Producer(db, notify=False).publish_chunks(exec_id, ["ok"])
    producer.append_events(exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])
    with pytest.raises(Conflict):
        producer.publish_chunks(exec_id, ["late"])


def test_a_producers_chunk_publisher_redacts_with_its_rules(db):
    producer = Producer(db, redact=Redactor(["flavour"]))
    with producer.chunk_publisher("e-1") as out:
        assert out.redact is not None and out.redact("flavour=vanilla") == "flavour=[REDACTED]"


@pytest.mark.parametrize("size", [10, 7_800, 20_000])
def test_every_payload_reads_back_as_the_part_it_was_written_as(size):
    text = ("é" * size)[:size]
    written = payloads("e-1", "p.3", text)
    parts = [parse_payload(p) for p in written]
    assert [(p.exec_id, p.key, p.place, p.parts) for p in parts if p] == [
        ("e-1", "p.3", n, len(written)) for n in range(len(written))
    ]
    assert "".join(p.text for p in parts if p) == text


@pytest.mark.parametrize("payload", ["", "e|k|0", "e|k|x|1|t", "e|k|0|²|t"])
def test_other_payloads_on_the_chunk_channel_are_ignored(payload):
    assert parse_payload(payload) is None
    assert Reassembler().feed(payload) is None
