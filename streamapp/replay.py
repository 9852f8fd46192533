"""Replay pages: stored events read back as SSE frames, in id order, bounded in bytes (SPEC §5, §8).

The frames are put together by PostgreSQL and cross the wire as the bytes the
client gets (varchar read as bytes): no decode, format and encode per event in
the worker, which is what bounded replay and fan-out (issue 10).

A page is a plain ``ORDER BY id LIMIT n``. Its memory bound comes from
``executions.envelope_bytes_max`` (migration 0006), an upper bound on the data
lines of every envelope of the execution that PostgreSQL keeps up to date
itself: ``n`` frames of at most that plus :data:`FRAME_OVERHEAD` bytes fit in
:data:`PAGE_BYTES`. A running byte count in a window function gives the same
bound for every execution, but cost more than the rest of the read together; it
only fills up a page that one large event elsewhere in its execution cut short
(fewer than :data:`PLAIN_PAGE_MIN` events), so such an execution still replays
in a few large pages rather than thousands of small ones.
"""

from __future__ import annotations

import typing as t

import psycopg2.extensions

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import cursor as Cursor

#: A page holds at most this many bytes of frames, unless it is one event larger than that.
PAGE_BYTES = 4 * 1024 * 1024
#: The most a frame adds to its data lines: ``id: `` and 19 digits, ``event: `` and a
#: 64-character type, ``data: `` and three line ends (SPEC §5).
FRAME_OVERHEAD = 4 + 19 + 8 + 64 + 6 + 3
#: A page sized from the largest envelope that holds fewer events, more following, is filled up
#: by a running byte count.
PLAIN_PAGE_MIN = 500

Frame = tuple[int, str, bytes]

# One frame, SPEC §5 bytes. An envelope holding a raw line break was not written by a
# producer (json.dumps escapes them); it is split into data lines exactly as
# framing.event_frame splits it, so no payload can end a frame early or inject a field.
# Whether any envelope of the execution holds one is known per execution (migration 0006),
# so the split costs nothing per event elsewhere; the parenthesised constants fold once.
_FRAME = r"""
    ('id: ' || id || (chr(10) || 'event: ') || type || (chr(10) || 'data: ')
     || CASE WHEN (SELECT raw_line_breaks FROM executions WHERE exec_id = %(exec_id)s)
             THEN regexp_replace(envelope, '\r\n|\r|\n', chr(10) || 'data: ', 'g')
             ELSE envelope
        END
     || (chr(10) || chr(10)))::varchar
"""

# The plain page (migration 0007: a function, so its plan is kept per connection rather than
# made per read); its last row, the one without a type, carries the page size n. It frames
# events as _FRAME does.
_SELECT_PAGE = "SELECT * FROM streamapp_frames_after(%(exec_id)s, %(after)s, %(limit)s, %(max_bytes)s, %(overhead)s)"

# The rest of a page, cut by its running byte count: a frame goes while the rest stays within
# max_bytes; next_id tells whether anything follows the last one kept.
_SELECT_COUNTED = f"""
SELECT id, type, frame, next_id FROM (
    SELECT id, type, frame,
           sum(octet_length(frame)) OVER w AS upto,
           lead(id) OVER w AS next_id
    FROM (
        SELECT id, type, {_FRAME} AS frame
        FROM events
        WHERE exec_id = %(exec_id)s AND id > %(after)s
        ORDER BY id
        LIMIT %(limit)s
    ) page
    WINDOW w AS (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
) counted
WHERE upto <= %(max_bytes)s
ORDER BY id
"""

# The first page of several executions at once, each as streamapp_frames_after reads it, in
# order: a multiplexed stream's replay in one round trip (SPEC §5.6).
_SELECT_PAGES = """
SELECT c.n, f.id, f.type, f.frame
FROM unnest(%(exec_ids)s::text[], %(afters)s::bigint[]) WITH ORDINALITY AS c(exec_id, after, n)
CROSS JOIN LATERAL streamapp_frames_after(c.exec_id, c.after, %(limit)s, %(max_bytes)s, %(overhead)s)
    WITH ORDINALITY AS f(id, type, frame, k)
ORDER BY c.n, f.k
"""

#: varchar columns as bytes, as PostgreSQL sent them; text columns stay str.
_VARCHAR_AS_BYTES = psycopg2.extensions.new_type((1043,), "STREAMAPP_FRAME", psycopg2.extensions.BYTES)


def frames_after(cur: Cursor, exec_id: str, after: int, limit: int) -> tuple[list[Frame], bool]:
    """Stored events with ``id > after`` as SSE frames, ``(id, type, frame)`` in id order, and whether
    more follow; at most ``limit`` events and :data:`PAGE_BYTES` bytes of frames (or one event).
    """
    psycopg2.extensions.register_type(_VARCHAR_AS_BYTES, cur)
    params = {"exec_id": exec_id, "after": after, "limit": limit, "max_bytes": PAGE_BYTES, "overhead": FRAME_OVERHEAD}
    cur.execute(_SELECT_PAGE, params)
    rows: list[t.Any] = cur.fetchall()
    if not rows:
        return [], False  # no such execution
    size = rows.pop()[0] if rows[-1][1] is None else _page_size(rows)
    if len(rows) < size or size >= min(limit, PLAIN_PAGE_MIN):
        return rows, len(rows) == size
    # A large envelope somewhere in this execution leaves few events to a page sized from it,
    # and more follow: fill the rest of the page by a running byte count (one more round trip).
    used = sum(len(frame) for _, _, frame in rows)
    params.update(after=rows[-1][0], limit=limit - len(rows), max_bytes=PAGE_BYTES - used)
    cur.execute(_SELECT_COUNTED, params)
    counted = cur.fetchall()
    rows.extend((event_id, type_name, frame) for event_id, type_name, frame, _ in counted)
    more = len(rows) == limit or not counted or counted[-1][3] is not None
    return rows, more


def first_pages(cur: Cursor, cursors: Sequence[tuple[str, int]], limit: int) -> list[tuple[list[Frame], bool]]:
    """The first page after each ``(exec_id, after)`` as :func:`frames_after` reads it, and whether
    more follow, in one round trip. The pages share one page's bounds (``limit`` events,
    :data:`PAGE_BYTES`), evenly: a caller reads on with :func:`frames_after` where more follow."""
    share = len(cursors)
    params = {
        "exec_ids": [exec_id for exec_id, _ in cursors],
        "afters": [after for _, after in cursors],
        "limit": max(1, limit // share),
        "max_bytes": max(1, PAGE_BYTES // share),
        "overhead": FRAME_OVERHEAD,
    }
    psycopg2.extensions.register_type(_VARCHAR_AS_BYTES, cur)
    cur.execute(_SELECT_PAGES, params)
    pages: list[tuple[list[Frame], bool]] = [([], False) for _ in cursors]
    for n, event_id, type_name, frame in cur.fetchall():
        rows = pages[n - 1][0]
        if type_name is None:  # the page's size: as many rows as that means more may follow
            pages[n - 1] = (rows, len(rows) == event_id)
        else:
            rows.append((event_id, type_name, frame))
    return pages


def _page_size(rows: list[t.Any]) -> int:
    # UNION ALL keeps its branches' order in practice; should a plan ever not, find the row.
    for n, row in enumerate(rows):
        if row[1] is None:
            return t.cast(int, rows.pop(n)[0])
    raise AssertionError("frames_after: the page size row is missing")
