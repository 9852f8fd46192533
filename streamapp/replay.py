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
is used only where one large event would otherwise shrink every page of its
execution to a few events.
"""

from __future__ import annotations

import typing as t

import psycopg2.extensions

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

#: A page holds at most this many bytes of frames, unless it is one event larger than that.
PAGE_BYTES = 4 * 1024 * 1024
#: The most a frame adds to its data lines: ``id: `` and 19 digits, ``event: `` and a
#: 64-character type, ``data: `` and three line ends (SPEC §5).
FRAME_OVERHEAD = 4 + 19 + 8 + 64 + 6 + 3
#: Below this many events a page sized from the largest envelope is cut by a running byte count.
PLAIN_PAGE_MIN = 500

Frame = tuple[int, str, bytes]

# One frame, SPEC §5 bytes. An envelope holding a raw line break was not written by a
# producer (json.dumps escapes them); it is split into data lines exactly as
# framing.event_frame splits it, so no payload can end a frame early or inject a field.
_FRAME = r"""
    ('id: ' || id || chr(10) || 'event: ' || type || chr(10) || 'data: '
     || CASE WHEN strpos(envelope, chr(10)) + strpos(envelope, chr(13)) = 0 THEN envelope
             ELSE regexp_replace(envelope, '\r\n|\r|\n', chr(10) || 'data: ', 'g')
        END
     || chr(10) || chr(10))::varchar
"""

# The plain page, or, when the execution's largest envelope leaves fewer than PLAIN_PAGE_MIN
# of them to a page, no rows (the one-time filter skips the read). Either way the last row,
# the one without a type, carries the page size n.
_SELECT_PAGE = f"""
WITH cap AS (
    SELECT least(%(limit)s, greatest(1, %(max_bytes)s / (envelope_bytes_max + %(overhead)s))) AS n
    FROM executions
    WHERE exec_id = %(exec_id)s
)
(
    SELECT id, type, {_FRAME}
    FROM events
    WHERE exec_id = %(exec_id)s AND id > %(after)s AND (SELECT n FROM cap) >= %(plain_min)s
    ORDER BY id
    LIMIT (SELECT n FROM cap)
)
UNION ALL
SELECT n, NULL, NULL FROM cap
"""

# A page cut by its running byte count: a frame goes while the page stays within max_bytes
# (the first always goes); next_id tells whether anything follows the last one kept.
_SELECT_COUNTED_PAGE = f"""
SELECT id, type, frame, next_id FROM (
    SELECT id, type, frame,
           sum(octet_length(frame)) OVER w AS upto,
           lead(id) OVER w AS next_id,
           row_number() OVER w AS n
    FROM (
        SELECT id, type, {_FRAME} AS frame
        FROM events
        WHERE exec_id = %(exec_id)s AND id > %(after)s
        ORDER BY id
        LIMIT %(limit)s
    ) page
    WINDOW w AS (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
) counted
WHERE upto <= %(max_bytes)s OR n = 1
ORDER BY id
"""

#: varchar columns as bytes, as PostgreSQL sent them; text columns stay str.
_VARCHAR_AS_BYTES = psycopg2.extensions.new_type((1043,), "STREAMAPP_FRAME", psycopg2.extensions.BYTES)


def frames_after(cur: Cursor, exec_id: str, after: int, limit: int) -> tuple[list[Frame], bool]:
    """Stored events with ``id > after`` as SSE frames, ``(id, type, frame)`` in id order, and whether
    more follow; at most ``limit`` events and :data:`PAGE_BYTES` bytes of frames (or one event).
    """
    psycopg2.extensions.register_type(_VARCHAR_AS_BYTES, cur)
    plain_min = min(limit, PLAIN_PAGE_MIN)
    params = {
        "exec_id": exec_id,
        "after": after,
        "limit": limit,
        "max_bytes": PAGE_BYTES,
        "overhead": FRAME_OVERHEAD,
        "plain_min": plain_min,
    }
    cur.execute(_SELECT_PAGE, params)
    rows: list[t.Any] = cur.fetchall()
    if not rows:
        return [], False  # no such execution
    size = rows.pop()[0] if rows[-1][1] is None else _page_size(rows)
    if size >= plain_min:
        return rows, len(rows) == size
    cur.execute(_SELECT_COUNTED_PAGE, params)
    counted = cur.fetchall()
    more = len(counted) == limit or bool(counted and counted[-1][3] is not None)
    return [(event_id, type_name, frame) for event_id, type_name, frame, _ in counted], more


def _page_size(rows: list[t.Any]) -> int:
    # UNION ALL keeps its branches' order in practice; should a plan ever not, find the row.
    for n, row in enumerate(rows):
        if row[1] is None:
            return t.cast(int, rows.pop(n)[0])
    raise AssertionError("frames_after: the page size row is missing")
