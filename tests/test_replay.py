"""Replay pages: the framing module's bytes, every event once and in order, bounded in bytes (SPEC §5, §8)."""

from __future__ import annotations

import typing as t

import pytest

from streamapp import framing
from streamapp import migrate
from streamapp import replay
from streamapp.db import Database
from streamapp.producer import Producer
from streamapp.producer import append_events

PATHS = pytest.mark.parametrize(
    "plain_min", [1, 10**9], ids=["sized from the largest envelope", "filled up by a running byte count"]
)


def _stored_workflow(producer: t.Any, account: t.Any, events: list[dict[str, t.Any]]) -> str:
    exec_id = t.cast(str, producer.create_execution("workflow", "w", account.user.get_id())["exec_id"])
    producer.append_events(exec_id, events)
    return exec_id


def _all_pages(db: Database, exec_id: str, limit: int) -> list[list[replay.Frame]]:
    pages: list[list[replay.Frame]] = []
    last, more = 0, True
    with db.autocommit() as cur:
        while more:
            page, more = replay.frames_after(cur, exec_id, last, limit)
            pages.append(page)
            last = page[-1][0] if page else last
    return pages


def _ids(pages: list[list[replay.Frame]]) -> list[int]:
    return [event_id for page in pages for event_id, _, _ in page]


@PATHS
def test_frames_are_the_framing_modules_bytes_for_every_stored_event(db, producer, account, monkeypatch, plain_min):
    monkeypatch.setattr(replay, "PLAIN_PAGE_MIN", plain_min)
    text = 'naïve ☃ \u2028 "quoted" \\ back'
    events = [
        {"type": "workflow_status", "data": {"status": "RUNNING"}},
        {"type": "warning", "data": {"code": "w", "message": text}},
        {"type": "custom_type", "data": {"lines": "one\ntwo\r\nthree"}},
    ]
    exec_id = _stored_workflow(producer, account, events)
    with db.autocommit() as cur:
        frames, more = replay.frames_after(cur, exec_id, 0, 100)
        cur.execute("SELECT id, type, envelope FROM events WHERE exec_id = %s ORDER BY id", (exec_id,))
        stored = cur.fetchall()
    assert not more
    assert frames == [(i, kind, framing.stored_event_frame(i, kind, envelope)) for i, kind, envelope in stored]
    assert all(isinstance(frame, bytes) and isinstance(kind, str) for _, kind, frame in frames)


@PATHS
@pytest.mark.parametrize(
    "envelope",
    [
        '{"a":1}\r\nid: 99\n\nevent: forged',
        "a\rb",
        "a\nb",
        "\r\r\n\n\r",
        "\n",
        "\rtrailing\r",
        "\r\n\r\nlead",
        "x\n\ry",
        "é\r☃\n",
    ],
)
def test_a_raw_line_break_in_the_table_is_split_as_the_framing_module_splits_it(
    db, producer, account, monkeypatch, plain_min, envelope
):
    """No payload can end a frame early or inject a field (SPEC §5), even one no producer could write."""
    monkeypatch.setattr(replay, "PLAIN_PAGE_MIN", plain_min)
    exec_id = _stored_workflow(producer, account, [{"type": "progress", "data": {}}] * 2)
    with db.transaction() as cur:  # a row edited by hand: json.dumps never writes a raw line break
        cur.execute("UPDATE events SET envelope = %s WHERE exec_id = %s AND id = 1", (envelope, exec_id))
    with db.autocommit() as cur:
        frames, _ = replay.frames_after(cur, exec_id, 0, 100)
    assert frames[0] == (1, "progress", framing.event_frame(1, "progress", envelope))
    assert frames[1][2].startswith(b"id: 2\nevent: progress\ndata: {")


@PATHS
def test_a_page_stops_at_its_byte_budget_and_says_more_follow(db, producer, account, monkeypatch, plain_min):
    monkeypatch.setattr(replay, "PLAIN_PAGE_MIN", plain_min)
    monkeypatch.setattr(replay, "PAGE_BYTES", 3000)
    exec_id = _stored_workflow(producer, account, [{"type": "progress", "data": {"pad": "x" * 1000}}] * 10)
    pages = _all_pages(db, exec_id, 100)
    assert _ids(pages) == list(range(1, 11))
    assert len(pages) > 3 and all(sum(len(frame) for _, _, frame in page) <= 3000 for page in pages)


@PATHS
def test_no_page_of_large_envelopes_holds_more_than_its_byte_budget(db, producer, account, monkeypatch, plain_min):
    """SPEC §8 speed without a worker ballooning: a page never holds more than PAGE_BYTES of frames,
    unless it is a single event larger than that; every event still comes once, in order."""
    monkeypatch.setattr(replay, "PLAIN_PAGE_MIN", plain_min)
    monkeypatch.setattr(replay, "PAGE_BYTES", 600_000)
    sizes = [10, 200, 30_000, 10, 10, 90_000, 10, 250_000, 250_000, 10, 5_000, 10]
    exec_id = _stored_workflow(producer, account, [{"type": "progress", "data": {"pad": "x" * n}} for n in sizes])
    pages = _all_pages(db, exec_id, 5000)
    assert _ids(pages) == list(range(1, len(sizes) + 1))
    assert all(sum(len(frame) for _, _, frame in page) <= replay.PAGE_BYTES for page in pages)
    assert max(len(page) for page in pages) > 1

    # A row edited by hand, larger than the budget once split into data lines (0.4 MB of raw line
    # breaks become 0.7 MB): it comes whole, alone on its page, and every other page keeps the bound.
    forged = ("y" * 7 + "\n") * 50_000
    with db.transaction() as cur:
        cur.execute("UPDATE events SET envelope = %s WHERE exec_id = %s AND id = 4", (forged, exec_id))
    pages = _all_pages(db, exec_id, 5000)
    assert _ids(pages) == list(range(1, len(sizes) + 1))
    assert [(4, "progress", framing.event_frame(4, "progress", forged))] in pages
    assert len(framing.event_frame(4, "progress", forged)) > replay.PAGE_BYTES
    assert all(sum(len(frame) for _, _, frame in page) <= replay.PAGE_BYTES for page in pages if len(page) > 1)


def test_one_large_event_does_not_shrink_every_page_of_its_execution(db, producer, account):
    """Sized from the largest envelope, this execution's pages would hold 16 events each."""
    events = [{"type": "progress", "data": {"n": n}} for n in range(1000)]
    events.insert(500, {"type": "progress", "data": {"pad": "x" * 250_000}})
    exec_id = _stored_workflow(producer, account, events)
    pages = _all_pages(db, exec_id, 5000)
    assert [len(page) for page in pages] == [1001]


def test_small_events_fill_a_page_up_to_the_limit(db, producer, account):
    exec_id = _stored_workflow(producer, account, [{"type": "progress", "data": {"n": n}} for n in range(30)])
    pages = _all_pages(db, exec_id, 10)
    assert [len(page) for page in pages] == [10, 10, 10, 0]  # a full last page cannot tell it is the last


@PATHS
def test_no_frames_after_the_newest(db, producer, account, monkeypatch, plain_min):
    monkeypatch.setattr(replay, "PLAIN_PAGE_MIN", plain_min)
    exec_id = _stored_workflow(producer, account, [{"type": "progress", "data": {}}])
    with db.autocommit() as cur:
        assert replay.frames_after(cur, exec_id, 1, 100) == ([], False)
        assert replay.frames_after(cur, "no-such-execution", 0, 100) == ([], False)


def test_the_migration_sizes_pages_for_events_stored_before_it(empty_database, tmp_path):
    """Migration 0006 backfills envelope_bytes_max and raw_line_breaks from the events already stored."""
    before = tmp_path / "before"
    before.mkdir()
    for path in migrate.pending_files():
        if path.name < "0006":
            (before / path.name).write_text(path.read_text())
    db = Database(empty_database, 2)
    try:
        migrate.upgrade(db, before)
        envelopes = {"big": '{"pad":"' + "z" * 5000 + '"}', "broken": "a\r\nb\n" * 300, "small": "{}"}
        with db.transaction() as cur:
            for exec_id, envelope in [*envelopes.items(), ("empty", None)]:
                cur.execute(
                    "INSERT INTO executions (exec_id, kind, name, owner_id) VALUES (%s, 'workflow', 'w', '1')",
                    (exec_id,),
                )
                if envelope is not None:
                    cur.execute(
                        "INSERT INTO events (exec_id, id, type, created_at, envelope) VALUES (%s, 1, 'p', now(), %s)",
                        (exec_id, envelope),
                    )
        migrate.upgrade(db)
        with db.transaction() as cur:
            cur.execute("SELECT exec_id, envelope_bytes_max, raw_line_breaks FROM executions")
            sizes = {exec_id: (size, raw) for exec_id, size, raw in cur.fetchall()}
    finally:
        db.close()
    split = len(framing.event_frame(1, "p", envelopes["broken"])) - len(b"id: 1\nevent: p\ndata: \n\n")
    assert sizes == {"big": (5010, False), "broken": (split, True), "small": (1000, False), "empty": (1000, False)}


def _largest(db: Database, exec_id: str) -> tuple[int, int]:
    """(the largest envelope stored, envelope_bytes_max) of one execution."""
    with db.autocommit() as cur:
        cur.execute(
            "SELECT (SELECT max(octet_length(envelope)) FROM events WHERE exec_id = %(e)s), envelope_bytes_max"
            " FROM executions WHERE exec_id = %(e)s",
            {"e": exec_id},
        )
        return t.cast(tuple[int, int], cur.fetchone())


def test_every_append_path_keeps_the_largest_envelope_up_to_date(db, producer, account):
    """The bound holds whichever way an event is written: a host's transaction, the locking
    path, the one-round-trip path for a known execution (SPEC §2, §3)."""
    big = [{"type": "progress", "data": {"pad": "x" * n}} for n in (3000, 10)]
    exec_id = t.cast(str, producer.create_execution("workflow", "w", account.user.get_id())["exec_id"])
    with db.transaction() as cur:
        append_events(cur, exec_id, big)  # inside the caller's own transaction
    assert _largest(db, exec_id)[1] == _largest(db, exec_id)[0] > 3000

    fresh = Producer(db)  # knows no execution: the locking path
    fresh.append_events(exec_id, [{"type": "progress", "data": {"pad": "x" * 9000}}])
    assert _largest(db, exec_id)[1] == _largest(db, exec_id)[0] > 9000

    # It knows the execution now: the one-round-trip path.
    fresh.append_events(exec_id, [{"type": "progress", "data": {"pad": "x" * n}} for n in (20_000, 10)])
    assert _largest(db, exec_id)[1] == _largest(db, exec_id)[0] > 20_000


def test_first_pages_of_several_executions_in_one_read_are_what_each_reads_alone(db, producer, account):
    """A multiplexed stream's replay (SPEC §5.6): one round trip, every page as frames_after reads it."""
    small = _stored_workflow(producer, account, [{"type": "warning", "data": {"code": "c", "message": "m"}}] * 3)
    many = _stored_workflow(producer, account, [{"type": "progress", "data": {"n": n}} for n in range(30)])
    broken = _stored_workflow(producer, account, [{"type": "progress", "data": {}}] * 2)
    with db.transaction() as cur:  # a raw line break, as no producer writes one
        cur.execute("UPDATE events SET envelope = %s WHERE exec_id = %s AND id = 1", ('{"a":\n1}', broken))
    wanted = [(small, 1), (many, 0), ("no-such-execution", 0), (broken, 0), (small, 3)]
    with db.autocommit() as cur:
        pages = replay.first_pages(cur, wanted, 40)  # 8 events a page each: `many` has more
        alone = [replay.frames_after(cur, exec_id, after, 8) for exec_id, after in wanted]
    assert pages == alone
    assert [len(rows) for rows, _ in pages] == [2, 8, 0, 2, 0]
    assert [more for _, more in pages] == [False, True, False, False, False]
    assert pages[3][0][0][2] == framing.event_frame(1, "progress", '{"a":\n1}')


def test_first_pages_share_one_pages_byte_budget(db, producer, account, monkeypatch):
    monkeypatch.setattr(replay, "PAGE_BYTES", 6000)
    ids = [
        _stored_workflow(producer, account, [{"type": "progress", "data": {"pad": "x" * 1000}}] * 5) for _ in range(3)
    ]
    with db.autocommit() as cur:
        pages = replay.first_pages(cur, [(exec_id, 0) for exec_id in ids], 5000)
    assert sum(len(frame) for rows, _ in pages for _, _, frame in rows) <= 6000
    assert all(rows and more for rows, more in pages)
