"""Database connections: a small blocking pool per worker and the listener's connection.

Under gunicorn's gevent worker, psycopg2 is made cooperative by psycogreen
(patched in ``post_fork`` before any connection opens), and the pool's
semaphore is patched by gevent, so a greenlet waiting for a pooled connection
yields instead of blocking the worker. A connection is used by one greenlet at a
time and returned before a stream yields to its client (STYLE §2).

Outages (SPEC §2 "Robustness"): this module owns the connections, so it alone
tells "PostgreSQL is away" (unreachable, restarting, out of connections) from
"this statement failed". It raises :class:`~streamapp.errors.DatabaseUnavailable`
for the first, which every endpoint answers with 503 and ``Retry-After``;
the pool drops the dead connections and opens new ones when asked next, so
service resumes by itself. :class:`Outage` logs one line when an outage
begins and one when it ends, never one per request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import sys
import threading
import time
import typing as t
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions

from .errors import DatabaseUnavailable

if t.TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 30.0
#: libpq gives up on a server that does not answer after this long, unless the URL says otherwise.
CONNECT_TIMEOUT_S = 5
#: ``Retry-After`` of a 503 for an outage, drawn in this range so clients do not all return at once.
RETRY_AFTER_S = (2, 5)
# SQLSTATEs that say the server is away, not that a statement failed: admin,
# crash and "cannot connect now" shutdowns, and "too many connections". Class
# 08 (connection exception) and errors without a SQLSTATE (libpq's own: no
# route, refused, "server closed the connection unexpectedly") are outages too.
_OUTAGE_CODES = frozenset({"57P01", "57P02", "57P03", "53300"})


class _Semaphore(t.Protocol):
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...


def _semaphore(size: int) -> _Semaphore:
    """gevent's semaphore in a gevent worker, the standard one elsewhere (threads)."""
    if "gevent" in sys.modules:
        from gevent import monkey
        from gevent.lock import BoundedSemaphore

        if monkey.is_module_patched("threading"):
            # Compiled, and waits on the hub directly: the standard one is Python code around
            # a condition, taken and released on every checkout (issue 10).
            return t.cast(_Semaphore, BoundedSemaphore(size))
    return threading.BoundedSemaphore(size)


class PoolTimeout(DatabaseUnavailable):
    """No pooled connection became free in time: the pool is out of connections."""


def is_outage(exc: BaseException, conn: Connection | None = None) -> bool:
    """Tell whether a driver error means PostgreSQL is away rather than that one statement failed.

    A deadlock, a cancelled statement or a constraint violation is not an outage.
    """
    if isinstance(exc, psycopg2.InterfaceError):
        return True  # "connection already closed"
    if not isinstance(exc, psycopg2.Error):
        return False
    if conn is not None and conn.closed:
        return True
    if not isinstance(exc, psycopg2.OperationalError):
        return False
    code = exc.pgcode
    return code is None or code.startswith("08") or code in _OUTAGE_CODES


def retry_after() -> int:
    """Seconds a client should wait before it retries during an outage."""
    return random.randint(*RETRY_AFTER_S)


def describe(exc: BaseException) -> str:
    """The first line of an error's message, for a one-line log entry."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


class Outage:
    """Whether PostgreSQL is away, so each outage is logged once as it begins and once as it ends."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._lock = threading.Lock()

    def down(self, exc: BaseException) -> None:
        """Record a failure; only the first of an outage is logged."""
        with self._lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        log.warning("database unavailable (%s); answering 503 until it is back", describe(exc))

    def up(self) -> None:
        """Record a success; the first after an outage is logged."""
        if self.since is None:  # the hot path: one attribute read
            return
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            log.warning("database available again after %.1f s", time.monotonic() - since)


def connect(url: str, application_name: str = "streamapp") -> Connection:
    """Open one connection with the given ``application_name``.

    A URL without ``connect_timeout`` gets :data:`CONNECT_TIMEOUT_S`, so an
    unreachable host is an outage in seconds, not minutes.
    """
    try:
        has_timeout = "connect_timeout" in psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        has_timeout = False  # let connect() itself report the bad URL
    extra: dict[str, t.Any] = {} if has_timeout else {"connect_timeout": CONNECT_TIMEOUT_S}
    conn: psycopg2.extensions.connection = psycopg2.connect(url, application_name=application_name, **extra)
    return conn


@contextlib.contextmanager
def transaction_on(conn: Connection) -> Iterator[Cursor]:
    """A cursor in one transaction on ``conn``: committed on success, rolled back on error.

    Unlike ``with conn:``, a connection that died mid-transaction does not
    replace the original error with "connection already closed".
    """
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
        raise


class Database:
    """A bounded pool of connections; connections open lazily and reopen when broken."""

    def __init__(
        self, url: str, size: int = 8, application_name: str = "streamapp", *, pool_timeout_s: float = POOL_TIMEOUT_S
    ) -> None:
        self.url = url
        self.size = size
        self.application_name = application_name
        self.pool_timeout_s = pool_timeout_s
        self.outage = Outage()
        # A deque's append and pop are atomic: no lock or condition per checkout (issue 10).
        # The newest idle connection goes out first, so the others can time out server-side.
        self._idle: collections.deque[Connection] = collections.deque()
        self._slots_lock = threading.Lock()
        self._slots_semaphore: _Semaphore | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """Check out a connection for one unit of work.

        :raises DatabaseUnavailable: PostgreSQL is away, at connect or at any
            statement run on the connection (the driver's error is the
            ``__cause__``); any other driver error passes as it is.
        :raises PoolTimeout: every connection stayed busy for ``pool_timeout_s``.
        """
        if not self._slots.acquire(timeout=self.pool_timeout_s):
            busy = PoolTimeout(f"no database connection free after {self.pool_timeout_s:.0f} s", retry_after())
            self.outage.down(busy)
            raise busy
        conn = None
        try:
            conn = self._take()
            yield conn
        except psycopg2.Error as exc:
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            if not is_outage(exc, conn):
                raise
            # The server went away or restarted: the idle connections are dead too.
            self.close()
            self.outage.down(exc)
            raise DatabaseUnavailable(retry_after=retry_after()) from exc
        else:
            self.outage.up()
        finally:
            self._give_back(conn)
            self._slots.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        with self.connection() as conn, transaction_on(conn) as cur:
            yield cur

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Cursor]:
        """A cursor whose every statement commits on its own.

        For reads and self-contained statements on hot paths: no ``BEGIN``
        and ``COMMIT`` round trips. A string of several statements still runs
        as one implicit transaction.
        """
        with self.connection() as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    yield cur
            finally:
                if not conn.closed:
                    conn.autocommit = False

    @property
    def _slots(self) -> _Semaphore:
        # Made at first use, in the process that uses it: an app built in gunicorn's
        # master (`python app.py`) is forked into a worker that gevent patches after.
        slots = self._slots_semaphore
        if slots is None:
            with self._slots_lock:
                if self._slots_semaphore is None:
                    self._slots_semaphore = _semaphore(self.size)
                slots = self._slots_semaphore
        return slots

    def _take(self) -> Connection:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return connect(self.url, self.application_name)
            if not conn.closed:
                return conn

    def _give_back(self, conn: Connection | None) -> None:
        if conn is None or conn.closed:
            return
        status = conn.info.transaction_status
        if status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            # Broken or left inside a transaction: never hand that to the next user.
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            return
        self._idle.append(conn)

    def close(self) -> None:
        """Close every idle connection (at worker exit and in tests)."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def ping(self) -> bool:
        """Whether a trivial query succeeds."""
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
                return True
        except (psycopg2.Error, DatabaseUnavailable):
            return False
