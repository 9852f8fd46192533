"""Database connections: a small blocking pool per worker and the listener's connection.

Under gunicorn's gevent worker, psycopg2 is made cooperative by psycogreen
(patched in ``post_fork`` before any connection opens), and ``queue.Queue`` is
patched by gevent, so a greenlet waiting for a pooled connection yields
instead of blocking the worker. A connection is used by one greenlet at a
time and returned before a stream yields to its client (STYLE §2).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import typing as t
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions

if t.TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger(__name__)

POOL_TIMEOUT_S = 30.0


class PoolTimeout(Exception):
    """No pooled connection became free in time."""


def connect(url: str, application_name: str = "streamapp") -> Connection:
    """Open one connection with the given ``application_name``."""
    return psycopg2.connect(url, application_name=application_name)


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

    def __init__(self, url: str, size: int = 8, application_name: str = "streamapp") -> None:
        self.url = url
        self.size = size
        self.application_name = application_name
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """Check out a connection for one unit of work.

        :raises PoolTimeout: when every connection stays busy for ``POOL_TIMEOUT_S``.
        """
        if not self._slots.acquire(timeout=POOL_TIMEOUT_S):
            raise PoolTimeout(f"no database connection free after {POOL_TIMEOUT_S:.0f} s")
        conn = None
        try:
            conn = self._take()
            yield conn
        except psycopg2.Error as exc:
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                # The server likely restarted: the idle connections are dead too.
                self.close()
            raise
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

    def _take(self) -> Connection:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
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
        self._idle.put(conn)

    def close(self) -> None:
        """Close every idle connection (at worker exit and in tests)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def ping(self) -> bool:
        """Whether a trivial query succeeds."""
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
                return True
        except (psycopg2.Error, PoolTimeout):
            return False
