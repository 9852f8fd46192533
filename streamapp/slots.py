"""Per-user stream slots, counted in PostgreSQL across every worker (SPEC §7).

A stream takes a slot at connect and gives it back when it closes; each
worker's hub refreshes the slots of its open streams (``seen_at``), so that
the slots of a worker that died, and a slot whose give-back failed, stop
counting after :func:`stale_after`. The hub also retries those give-backs.
"""

from __future__ import annotations

import secrets
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Collection

    from psycopg2.extensions import cursor as Cursor

# One round trip: the statements run as one implicit transaction, so the
# advisory lock (released at its end) makes count-then-insert atomic for one
# user across workers; slots are not durable state, so no WAL flush is awaited.
_TAKE = """
SET LOCAL synchronous_commit TO off;
SELECT pg_advisory_xact_lock(hashtext('streamapp-slots:' || %(user_id)s));
INSERT INTO stream_slots (id, user_id, worker)
SELECT %(id)s, %(user_id)s, %(worker)s
WHERE (SELECT count(*) FROM stream_slots
       WHERE user_id = %(user_id)s AND seen_at > now() - make_interval(secs => %(stale_s)s)) < %(limit)s
RETURNING id
"""
_GIVE_BACK = """
SET LOCAL synchronous_commit TO off;
DELETE FROM stream_slots WHERE id = %(id)s
"""
_REFRESH = """
SET LOCAL synchronous_commit TO off;
UPDATE stream_slots SET seen_at = now() WHERE id = ANY(%(held)s::text[]);
DELETE FROM stream_slots WHERE id = ANY(%(released)s::text[])
"""


def stale_after(refresh_s: float) -> float:
    """Seconds after which a slot whose worker stopped refreshing it no longer counts."""
    return max(3 * refresh_s, 30.0)


def take(cur: Cursor, user_id: str, worker: str, limit: int, stale_s: float) -> str | None:
    """Take a slot for ``user_id`` unless they hold ``limit`` already; its id, else ``None``.

    Run it on an autocommit cursor: the statements form their own transaction.
    """
    slot_id = secrets.token_hex(12)
    params = {"id": slot_id, "user_id": user_id, "worker": worker, "stale_s": stale_s, "limit": limit}
    cur.execute(_TAKE, params)
    return slot_id if cur.fetchone() else None


def give_back(cur: Cursor, slot_id: str) -> None:
    cur.execute(_GIVE_BACK, {"id": slot_id})


def refresh(cur: Cursor, held: Collection[str], released: Collection[str]) -> None:
    """Mark the ``held`` slots as alive and delete the ``released`` ones, in one round trip.

    Only the slots of streams still open are named in ``held``: refreshing
    every row of a worker would keep a leaked slot counting for as long as the
    worker lives (issue 6). Deleting ``released`` again retries a give-back
    that failed; for one that worked it deletes nothing. Run it on an
    autocommit cursor.
    """
    cur.execute(_REFRESH, {"held": list(held), "released": list(released)})
