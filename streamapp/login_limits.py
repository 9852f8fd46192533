"""Login limits: failed logins counted in PostgreSQL, per account and per address (SPEC §7, issue 6).

After ``max_failures`` failed logins for one email, or ``max_address_failures``
from one client address, within ``window_s`` seconds, further logins for that
email (or from that address) answer 429 with ``Retry-After`` — even with the
right password, or guessing would go on until it succeeds. The limit lifts as
the failures age out of the window; a successful login clears that email's
failures. Unknown emails count like known ones, so the answer reveals nothing.

Failures live in the UNLOGGED table ``login_failures`` (migration 0003), so
every worker sees the same counts. A transaction-scoped advisory lock per
email makes count, password check and record one step for that email across
workers; failures for different emails from one address may overshoot the
address limit by the logins in flight at that moment.
"""

from __future__ import annotations

import hashlib
import math
import typing as t

from .errors import TooManyAttempts

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

_LOCK_EMAIL = "SELECT pg_advisory_xact_lock(hashtext('streamapp-login:' || encode(%(email_key)s, 'hex')))"
# The failure whose ageing out brings the count under the limit: the limit-th newest.
_UNDER_LIMIT_IN_EMAIL = """
SELECT extract(epoch FROM failed_at + make_interval(secs => %(window_s)s) - clock_timestamp())
FROM login_failures
WHERE email_key = %(email_key)s AND failed_at > clock_timestamp() - make_interval(secs => %(window_s)s)
ORDER BY failed_at DESC OFFSET %(offset)s LIMIT 1
"""
_UNDER_LIMIT_IN_ADDRESS = """
SELECT extract(epoch FROM failed_at + make_interval(secs => %(window_s)s) - clock_timestamp())
FROM login_failures
WHERE address = %(address)s AND failed_at > clock_timestamp() - make_interval(secs => %(window_s)s)
ORDER BY failed_at DESC OFFSET %(offset)s LIMIT 1
"""
_INSERT_FAILURE = "INSERT INTO login_failures (email_key, address) VALUES (%(email_key)s, %(address)s)"
_PRUNE = "DELETE FROM login_failures WHERE failed_at < clock_timestamp() - make_interval(secs => %(window_s)s)"
_CLEAR_EMAIL = "DELETE FROM login_failures WHERE email_key = %(email_key)s"


def email_key(email: str) -> bytes:
    """What is stored for an email: a SHA-256 of its trimmed, lowercased form."""
    return hashlib.sha256(email.strip().lower().encode()).digest()


def _seconds_left(cur: Cursor, query: str, params: dict[str, t.Any], limit: int) -> float | None:
    cur.execute(query, {**params, "offset": limit - 1})
    row = cur.fetchone()
    return None if row is None else float(row[0])


def check(
    cur: Cursor, email: str, address: str, *, max_failures: int, max_address_failures: int, window_s: int
) -> None:
    """Lock this email's count for the transaction and refuse a login over either limit.

    :raises TooManyAttempts: with ``retry_after``, the seconds until the count is under the limit.
    """
    key = email_key(email)
    cur.execute(_LOCK_EMAIL, {"email_key": key})
    left = _seconds_left(cur, _UNDER_LIMIT_IN_EMAIL, {"email_key": key, "window_s": window_s}, max_failures)
    if left is not None:
        raise TooManyAttempts(
            "too many failed logins for this account; retry later", retry_after=max(1, math.ceil(left))
        )
    left = _seconds_left(cur, _UNDER_LIMIT_IN_ADDRESS, {"address": address, "window_s": window_s}, max_address_failures)
    if left is not None:
        raise TooManyAttempts(
            "too many failed logins from your address; retry later", retry_after=max(1, math.ceil(left))
        )


def record_failure(cur: Cursor, email: str, address: str, *, window_s: int) -> None:
    """Count one failed login; forget failures older than the window (any account's)."""
    cur.execute(_INSERT_FAILURE, {"email_key": email_key(email), "address": address})
    cur.execute(_PRUNE, {"window_s": window_s})


def clear(cur: Cursor, email: str) -> None:
    """Forget this email's failures (after a successful login)."""
    cur.execute(_CLEAR_EMAIL, {"email_key": email_key(email)})
