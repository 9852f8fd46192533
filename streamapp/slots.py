"""Per-user stream counts, kept in PostgreSQL across every worker (SPEC §7).

A stream counts one for its user on its worker from connect to close. Each
worker has one row per user it serves (``stream_counts``), so admitting a
stream sums one row per worker, however many streams the user holds. The
worker's hub keeps the true counts in memory and writes them back at every
maintenance round (:func:`sync`): a give-back that failed, or one that raced
the round, is corrected there, and rows of a worker that died stop counting
after :func:`stale_after`.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from psycopg2.extensions import cursor as Cursor

# One round trip: the statements run as one implicit transaction, so the
# advisory lock (released at its end) makes sum-then-add atomic for one user
# across workers; counts are not durable state, so no WAL flush is awaited.
_TAKE = """
SET LOCAL synchronous_commit TO off;
SELECT pg_advisory_xact_lock(hashtext('streamapp-slots:' || %(user_id)s));
INSERT INTO stream_counts AS c (user_id, worker, streams)
SELECT %(user_id)s, %(worker)s, 1
WHERE (SELECT coalesce(sum(streams), 0) FROM stream_counts
       WHERE user_id = %(user_id)s AND seen_at > now() - make_interval(secs => %(stale_s)s)) < %(limit)s
ON CONFLICT (user_id, worker) DO UPDATE SET streams = c.streams + 1, seen_at = now()
RETURNING streams
"""
_GIVE_BACK = """
SET LOCAL synchronous_commit TO off;
UPDATE stream_counts SET streams = streams - 1
WHERE user_id = %(user_id)s AND worker = %(worker)s AND streams > 0
"""
_SYNC = """
SET LOCAL synchronous_commit TO off;
INSERT INTO stream_counts AS c (user_id, worker, streams)
SELECT u, %(worker)s, n FROM unnest(%(users)s::text[], %(counts)s::int[]) AS held(u, n)
ON CONFLICT (user_id, worker) DO UPDATE SET streams = excluded.streams, seen_at = now();
DELETE FROM stream_counts WHERE worker = %(worker)s AND NOT user_id = ANY(%(users)s::text[]);
DELETE FROM stream_counts WHERE seen_at < now() - make_interval(secs => %(forget_s)s)
"""
#: Rows of workers that died are deleted once they are this much older than stale: by then they
#: have long stopped counting, and the table must not grow with every worker ever started.
FORGET_AFTER_STALE = 10


def stale_after(refresh_s: float) -> float:
    """Seconds after which the counts of a worker that stopped writing them no longer count."""
    return max(3 * refresh_s, 30.0)


def take(cur: Cursor, user_id: str, worker: str, limit: int, stale_s: float) -> bool:
    """Count one more stream of ``user_id`` on ``worker``, unless they hold ``limit`` already.

    Run it on an autocommit cursor: the statements form their own transaction.
    """
    params = {"user_id": user_id, "worker": worker, "stale_s": stale_s, "limit": limit}
    cur.execute(_TAKE, params)
    return cur.fetchone() is not None


def give_back(cur: Cursor, user_id: str, worker: str) -> None:
    """Count one stream fewer; never below zero."""
    cur.execute(_GIVE_BACK, {"user_id": user_id, "worker": worker})


def sync(cur: Cursor, worker: str, counts: Mapping[str, int], stale_s: float) -> None:
    """Write ``worker``'s true counts (users with open streams only) and refresh them, in one round trip.

    Users missing from ``counts`` lose their row, whatever a failed give-back
    left there, and rows of workers long dead are deleted. Run it on an
    autocommit cursor.
    """
    users = list(counts)
    params = {
        "worker": worker,
        "users": users,
        "counts": [counts[u] for u in users],
        "forget_s": stale_s * FORGET_AFTER_STALE,
    }
    cur.execute(_SYNC, params)
