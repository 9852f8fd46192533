"""Per-user stream slots, counted in PostgreSQL across every worker (SPEC §7).

A stream takes a slot at connect and gives it back when it closes; each
worker's hub refreshes its slots' ``seen_at`` so that the slots of a worker
that died stop counting after :func:`stale_after`.
"""

from __future__ import annotations

import secrets
import typing as t

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

_LOCK_USER = "SELECT pg_advisory_xact_lock(hashtext('streamapp-slots:' || %(user_id)s))"
_COUNT = """
SELECT count(*) FROM stream_slots
WHERE user_id = %(user_id)s AND seen_at > now() - make_interval(secs => %(stale_s)s)
"""
_INSERT = "INSERT INTO stream_slots (id, user_id, worker) VALUES (%(id)s, %(user_id)s, %(worker)s)"


def stale_after(refresh_s: float) -> float:
    """Seconds after which a slot whose worker stopped refreshing it no longer counts."""
    return max(3 * refresh_s, 30.0)


def take(cur: Cursor, user_id: str, worker: str, limit: int, stale_s: float) -> str | None:
    """Take a slot for ``user_id`` unless they hold ``limit`` already; its id, else ``None``.

    The advisory lock (released at commit) makes count-then-insert atomic for
    one user across workers.
    """
    # Slots are not durable state: do not wait for a WAL flush at commit.
    cur.execute("SET LOCAL synchronous_commit TO off")
    cur.execute(_LOCK_USER, {"user_id": user_id})
    cur.execute(_COUNT, {"user_id": user_id, "stale_s": stale_s})
    if cur.fetchone()[0] >= limit:
        return None
    slot_id = secrets.token_hex(12)
    cur.execute(_INSERT, {"id": slot_id, "user_id": user_id, "worker": worker})
    return slot_id


def give_back(cur: Cursor, slot_id: str) -> None:
    cur.execute("SET LOCAL synchronous_commit TO off")
    cur.execute("DELETE FROM stream_slots WHERE id = %(id)s", {"id": slot_id})


def refresh(cur: Cursor, worker: str) -> None:
    """Mark every slot of this worker as alive; drop slots long stale (any worker's)."""
    cur.execute("SET LOCAL synchronous_commit TO off")
    cur.execute("UPDATE stream_slots SET seen_at = now() WHERE worker = %(worker)s", {"worker": worker})
