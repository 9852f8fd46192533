"""Best-effort text chunks: published through NOTIFY payloads, never stored (SPEC §4, §5.2).

Why NOTIFY: chunks are the one thing that must not be durable, and every
worker already holds a LISTEN connection, so the payload travels the path
wake-ups take, in commit order, with no table to write and clean. A
payload holds at most 8,000 bytes, so a larger chunk is split into parts
sent in one transaction (delivered together, in order) and reassembled by
each listener; nothing is truncated. Parts are keyed by a random producer id
and a sequence number, so chunks from two producers never mix, and a
payload is never identical to another (PostgreSQL folds identical payloads
of one transaction into one).

Payload: ``exec_id|producer.seq|part|parts|text``.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
import typing as t
from collections.abc import Callable
from collections.abc import Iterable

import psycopg2

from . import storage
from .errors import DatabaseUnavailable
from .errors import Invalid
from .redact import Redactor

if t.TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

    from .db import Database

log = logging.getLogger(__name__)

CHANNEL = "streamapp_chunks"
#: Bytes of text per NOTIFY payload; the header takes < 120 of PostgreSQL's 8,000.
PART_BYTES = 7800
#: A Python publisher flushes at a line end, or when its oldest text is this old.
FLUSH_INTERVAL_S = 0.05
#: ...or once it holds this many characters: a model that writes fast without line ends would
#: otherwise build chunks of hundreds of KB that every stream must take at once (issue 5).
MAX_CHUNK_CHARS = 16_000
_DEFAULT_REDACTOR = Redactor()
#: Text is redacted before it leaves the producer unless a caller passes another function.
_DEFAULT_REDACT = _DEFAULT_REDACTOR.redact_text


def check_text(text: t.Any, where: str = "text") -> str:
    """A chunk must be a non-empty string without NUL (PostgreSQL text cannot hold it).

    :raises Invalid: naming what is wrong.
    """
    if not isinstance(text, str) or not text:
        raise Invalid(f"{where} must be a non-empty string")
    if "\x00" in text:
        raise Invalid(f"{where} must not contain NUL characters")
    return text


def split(text: str, size: int = PART_BYTES) -> list[str]:
    """Split text into parts of at most ``size`` UTF-8 bytes, never inside a character."""
    raw = text.encode()
    parts, start = [], 0
    while start < len(raw):
        end = min(start + size, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:
            end -= 1  # do not cut a multi-byte character
        parts.append(raw[start:end].decode())
        start = end
    return parts


def payloads(exec_id: str, key: str, text: str) -> list[str]:
    """The NOTIFY payloads that carry one chunk (read back by :func:`parse_payload`)."""
    parts = split(text)
    return [f"{exec_id}|{key}|{n}|{len(parts)}|{part}" for n, part in enumerate(parts)]


class Part(t.NamedTuple):
    exec_id: str
    #: ``producer.seq``: which chunk of which publisher this part belongs to.
    key: str
    #: This part's place, from 0, and how many parts the chunk has.
    place: int
    parts: int
    text: str


def parse_payload(payload: str) -> Part | None:
    """One part of a chunk, as :func:`payloads` wrote it; ``None`` for anything else on the channel."""
    try:
        exec_id, key, place, parts, text = payload.split("|", 4)
        return Part(exec_id, key, int(place), int(parts), text)
    except ValueError:
        return None


# Chunks are never stored, so their transaction does not wait for a WAL flush.
_PUBLISH = storage.async_commit(
    "SELECT pg_notify(%s, p) FROM (SELECT p FROM unnest(%s::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n) s"
)


def publish(cur: Cursor, exec_id: str, texts: Iterable[str], producer_id: str, first_seq: int) -> int:
    """Send chunks in a transaction streamapp owns; they travel when it commits. Returns the next seq.

    One statement, which also makes the transaction's commit asynchronous
    (:func:`storage.async_commit`): never call it in a caller's transaction.
    """
    batch: list[str] = []
    seq = first_seq
    for text in texts:
        batch.extend(payloads(exec_id, f"{producer_id}.{seq}", text))
        seq += 1
    cur.execute(_PUBLISH, (CHANNEL, batch))
    return seq


class Reassembler:
    """Joins the parts of chunks in a listener; forgets incomplete ones after a while."""

    def __init__(self, max_pending: int = 1000, max_age_s: float = 30.0) -> None:
        self._pending: collections.OrderedDict[str, tuple[float, list[str | None]]] = collections.OrderedDict()
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.dropped = 0

    def feed(self, payload: str) -> tuple[str, str] | None:
        """One payload in; ``(exec_id, text)`` once a chunk is whole, else ``None``."""
        part = parse_payload(payload)
        if part is None:
            return None
        if part.parts == 1:
            return part.exec_id, part.text
        slot_key = f"{part.exec_id}|{part.key}"
        now = time.monotonic()
        self._expire(now)
        _, slots = self._pending.setdefault(slot_key, (now, [None] * part.parts))
        if not 0 <= part.place < len(slots):
            return None
        slots[part.place] = part.text
        if any(s is None for s in slots):
            return None
        del self._pending[slot_key]
        return part.exec_id, "".join(t.cast(list[str], slots))

    def _expire(self, now: float) -> None:
        while self._pending:
            key, (born, _) = next(iter(self._pending.items()))
            if now - born < self.max_age_s and len(self._pending) < self.max_pending:
                return
            del self._pending[key]
            self.dropped += 1


class ChunkPublisher:
    """Coalesces a model's tokens into chunks: one NOTIFY transaction about every 50 ms,
    or sooner at a line end, so a fast model is not thousands of notifications a second.

    ``with ChunkPublisher(db, exec_id) as out: out.write(token)`` — closing flushes.

    Secrets are caught across chunk boundaries (SPEC §7): each chunk is
    redacted whole, and when the timer, a line end or ``max_chars`` sends a
    chunk, the tail that more text could still make part of a secret stays
    behind for the next one (``Redactor.hold_from``): the last word when the
    text does not end in whitespace, a secret key or ``Bearer`` still
    waiting for its value, a secret ``key: value`` line not yet ended, a
    private key without its END line — at most ``redact.MAX_HOLD``
    characters. It goes out with the next text, or at :meth:`close`.
    :meth:`flush` sends everything, the tail included: call it only where
    no secret can be cut. With ``redact=None`` nothing is held or redacted.
    """

    def __init__(
        self,
        db: Database,
        exec_id: str,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        max_chars: int = MAX_CHUNK_CHARS,
        redact: Callable[[str], str] | None = _DEFAULT_REDACT,
    ) -> None:
        self.db = db
        self.exec_id = exec_id
        self.interval_s = interval_s
        self.max_chars = max_chars
        self.redact = redact
        # The redactor's own rule for what to hold back; the built-in one's for any other function.
        owner = redact if isinstance(redact, Redactor) else getattr(redact, "__self__", None)
        rules = owner if isinstance(owner, Redactor) else _DEFAULT_REDACTOR
        self._hold_from: Callable[[str], int] | None = None if redact is None else rules.hold_from
        self._held = ""  # sent text's tail that may be the start of a secret
        self.producer_id = secrets.token_hex(6)
        self._seq = 0
        self._buffer: list[str] = []
        self._buffered = 0  # characters
        self._since: float | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._timer = threading.Thread(target=self._flush_when_due, daemon=True)
        self._timer.start()

    def __enter__(self) -> ChunkPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, text: str) -> None:
        """Buffer text; flushed at a line end, at ``max_chars`` or after ``interval_s``."""
        check_text(text)
        with self._lock:
            self._buffer.append(text)
            self._buffered += len(text)
            full = self._buffered >= self.max_chars
            if self._since is None:
                self._since = time.monotonic()
                self._wake.set()
        if full or "\n" in text:
            self._send(hold=True)

    def flush(self) -> None:
        """Send everything buffered now, as one chunk, a held tail included."""
        self._send(hold=False)

    def _send(self, hold: bool) -> None:
        with self._send_lock:
            with self._lock:
                text = self._held + "".join(self._buffer)
                self._buffer, self._buffered, self._since = [], 0, None
                cut = self._hold_from(text) if hold and self._hold_from is not None else len(text)
                text, self._held = text[:cut], text[cut:]
            if not text:
                return
            if self.redact is not None:
                text = self.redact(text)
            with self.db.transaction() as cur:
                self._seq = publish(cur, self.exec_id, [text], self.producer_id, self._seq)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._timer.join()
        self.flush()

    def _flush_when_due(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    since = self._since
                if since is None:
                    break
                delay = since + self.interval_s - time.monotonic()
                if delay > 0:
                    # Re-read after waiting: a line-end flush may have sent that text
                    # meanwhile, and younger text must not go out early, cut mid-line.
                    # close() (and new text after a flush) cut the wait short.
                    self._wake.wait(delay)
                    self._wake.clear()
                    continue
                self._flush_on_timer()

    def _flush_on_timer(self) -> None:
        try:
            self._send(hold=True)
        except DatabaseUnavailable:
            pass  # best-effort text; the pool logs an outage once
        except psycopg2.Error:
            # Best-effort text: one failed flush loses that chunk, never the timer.
            log.warning("a text chunk of execution %s could not be published", self.exec_id, exc_info=True)
