"""Stream tickets: short-lived, signed, URL-safe passes for one stream (SPEC §7).

A browser on another origin cannot send a bearer header with ``EventSource``
and a long-lived token must never travel in a URL, so it asks for a ticket
(``POST …/stream-ticket``) and opens ``…/stream?ticket=``. A ticket names one
execution (kind and id), one user and, when it was asked for with an API
token, that token's prefix, so revoking the token also ends its tickets.

A ticket for a multiplexed stream (``POST /stream-tickets``, SPEC §5.6) is
the same, with the kind :data:`LIST_KIND` and, for the execution id, a
digest of the canonical list it names (``cursor.list_digest``): it admits
that list and no other, and never a single stream.

Tickets are itsdangerous ``URLSafeTimedSerializer`` strings with a salt of
their own (a session cookie or another signed value can never pass as one).
They are signed, not encrypted: the execution id, kind, user id and token
prefix inside are readable, and none of them is a secret. A ticket admits
connections from its signing time until ``expires_at`` (signing time + TTL),
as often as needed, so a quick reconnect works.

Time comes from one clock. The signer overrides itsdangerous's
``get_timestamp`` to read it in milliseconds (itsdangerous counts whole
seconds, which would make a 60 s ticket live anywhere between 59 and 60 s and
a 1 s ticket possibly not at all); tests pass a frozen clock instead of
sleeping. Errors::

    TicketError
     ├── TicketInvalid   bad signature or shape, or for another stream
     └── TicketExpired   past its expires_at
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import typing as t
from collections.abc import Callable

from itsdangerous import BadData
from itsdangerous import TimestampSigner
from itsdangerous import URLSafeTimedSerializer

SALT = "streamapp.stream-ticket"
#: The kind a multiplexed stream's ticket names: no execution's kind.
LIST_KIND = "streams"
#: A ticket signed this far in the future (clock skew between hosts) is still accepted.
MAX_CLOCK_SKEW_S = 5.0

Clock = Callable[[], float]


class TicketError(Exception):
    """A ticket that admits nothing; the message says why, never what the ticket holds."""


class TicketInvalid(TicketError):
    """Not a ticket we signed, malformed, or for another stream."""


class TicketExpired(TicketError):
    """A genuine ticket past its ``expires_at``."""


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a verified ticket says."""

    kind: str
    exec_id: str
    user_id: str
    #: the prefix of the API token the ticket was asked for with; ``None`` for a session
    token_prefix: str | None
    issued_at: datetime.datetime
    expires_at: datetime.datetime


class _MillisecondSigner(TimestampSigner):
    """itsdangerous's timestamp signer, on a given clock, in milliseconds."""

    def __init__(self, *args: t.Any, clock: Clock = time.time, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock() * 1000)

    def timestamp_to_datetime(self, ts: int) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.UTC)


class Tickets:
    """Issues and verifies stream tickets signed with ``secret_key``, valid ``ttl_s`` seconds.

    ``clock`` returns the time in seconds since the epoch (``time.time``);
    tests pass a frozen one.
    """

    def __init__(self, secret_key: str | bytes, ttl_s: float, *, clock: Clock = time.time) -> None:
        if not secret_key:
            raise ValueError("stream tickets need a secret key")
        self.ttl = datetime.timedelta(seconds=ttl_s)
        self.clock = clock
        self._serializer: URLSafeTimedSerializer = URLSafeTimedSerializer(
            secret_key, salt=SALT, signer=_MillisecondSigner, signer_kwargs={"clock": clock}
        )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), tz=datetime.UTC)

    def issue(
        self, kind: str, exec_id: str, user_id: str, token_prefix: str | None = None
    ) -> tuple[str, datetime.datetime]:
        """Sign a ticket for one stream; return it with its ``expires_at`` (UTC)."""
        ticket = self._serializer.dumps({"k": kind, "e": exec_id, "u": str(user_id), "t": token_prefix})
        # The expiry is derived from the timestamp actually signed, read back.
        _, issued_at = self._serializer.loads(ticket, return_timestamp=True)
        return ticket, issued_at + self.ttl

    def verify(self, ticket: str, *, kind: str, exec_id: str) -> Claims:
        """Check a ticket for the stream of ``kind``/``exec_id``, now.

        :raises TicketInvalid: not signed by us, malformed, or for another execution or list.
        :raises TicketExpired: past its ``expires_at``.
        """
        try:
            payload, issued_at = self._serializer.loads(ticket, return_timestamp=True)
        except (BadData, UnicodeError, ValueError, OverflowError, OSError):
            # A bad signature, or a signed value that is not a ticket: one answer.
            raise TicketInvalid("the stream ticket is not valid") from None
        claims = _claims(payload, issued_at, issued_at + self.ttl)
        if (claims.kind, claims.exec_id) != (kind, exec_id):
            what = "list of executions" if kind == LIST_KIND else "execution"
            raise TicketInvalid(f"the stream ticket is for another {what}")
        now = self._now()
        if now >= claims.expires_at:
            raise TicketExpired("the stream ticket has expired")
        if claims.issued_at - now > datetime.timedelta(seconds=MAX_CLOCK_SKEW_S):
            raise TicketInvalid("the stream ticket is not valid yet")
        return claims


def _claims(payload: t.Any, issued_at: datetime.datetime, expires_at: datetime.datetime) -> Claims:
    if not isinstance(payload, dict):
        raise TicketInvalid("the stream ticket is not valid")
    kind, exec_id, user_id, prefix = (payload.get(k) for k in ("k", "e", "u", "t"))
    if not (isinstance(kind, str) and isinstance(exec_id, str) and isinstance(user_id, str)) or not isinstance(
        prefix, (str, type(None))
    ):
        raise TicketInvalid("the stream ticket is not valid")
    return Claims(kind, exec_id, user_id, prefix, issued_at, expires_at)


def isoformat(moment: datetime.datetime) -> str:
    """``2026-11-24T19:00:00.123Z``: ISO-8601 in UTC, to the millisecond (SPEC §7 ``expires_at``)."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
