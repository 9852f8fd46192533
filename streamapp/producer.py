"""The producer API: create executions, append durable events, publish text chunks (SPEC §2, §3, §5.2).

Two ways to append:

* ``append_events(cur, exec_id, events)`` inside the caller's own psycopg2
  transaction: the host commits its own state and the events atomically; the
  ``NOTIFY`` is sent in that transaction (SPEC §3).
* ``Producer(db).append_events(exec_id, events)`` in a transaction of our own:
  the wake-up follows the data commit in the same round trip (:mod:`.own_transaction`).

A batch is checked and rendered by :mod:`.batches`. Where the caller must
decide on the execution before anything is written (the HTTP layer's "may this
user write to it?", SPEC §7), ``Producer.appending`` / ``canceling`` /
``publishing_chunks`` hand it over as a :class:`Pending`: the producer never
calls back into its caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import secrets
import typing as t
from collections.abc import Callable
from collections.abc import Sequence

from . import appends
from . import chunks
from . import counters
from . import own_transaction
from . import storage
from .batches import DEFAULT_MAX_EVENT_BYTES
from .batches import DEFAULT_MAX_JSON_DEPTH
from .batches import DEFAULT_REDACTOR
from .batches import AppendResult as AppendResult
from .batches import Redactor
from .batches import Rules
from .batches import has_sequence
from .batches import render
from .batches import render_tails
from .errors import Conflict
from .errors import Invalid
from .errors import NotFound
from .errors import Unavailable
from .exec_ids import EXEC_ID_PATTERN
from .executions import create_execution as create_execution  # part of the producer API

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from psycopg2.extensions import cursor as Cursor

    from .db import Database
    from .storage import Execution

R = t.TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Pending(t.Generic[R]):
    """A write held open until its caller has looked at the execution it goes to.

    ``execution`` is the row (locked, for an append or a cancel), or what this
    worker remembers of an execution it appended to before (its changing
    fields blank). The caller decides on it, then calls ``commit()``; leaving
    the ``with`` block without committing writes nothing.
    """

    execution: Execution
    commit: Callable[[], R]


def append_events(
    cur: Cursor,
    exec_id: str,
    events: Sequence[t.Any],
    *,
    kind: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> AppendResult:
    """Append a batch inside the caller's transaction, all or nothing; NOTIFY on its commit.

    :raises NotFound: unknown execution (of ``kind``, when given).
    :raises Conflict: after a terminal event.
    :raises Invalid: a type, data or sequence that breaks the catalog, or data nested
        deeper than ``max_json_depth`` (nothing stored).
    :raises TooLarge: an event's data over ``max_event_bytes``.
    """
    execution = _lock(cur, kind, exec_id)
    return _append_locked(cur, execution, events, Rules(max_event_bytes, redact, max_json_depth), notify)


def cancel(
    cur: Cursor,
    exec_id: str,
    *,
    reason: str | None = None,
    kind: str | None = None,
    redact: Redactor | None = DEFAULT_REDACTOR,
    notify: bool = True,
) -> Execution:
    """Cancel an execution inside the caller's transaction; return its row as it is after.

    Appends one ``error`` event ``{status: "CANCELED", error: {message:
    reason or "canceled", code: "canceled"}}`` (SPEC §2); the reason is
    redacted as event data is.

    :raises NotFound: unknown execution (of ``kind``, when given).
    :raises Conflict: it has already ended (``complete`` or ``error``).
    :raises Invalid: a reason that is not a non-empty string.
    :raises TooLarge: a reason over the event size limit.
    """
    event = _cancel_event(reason)
    return _end_locked(cur, _lock(cur, kind, exec_id), event, Rules(redact=redact), notify)


def _lock(cur: Cursor, kind: str | None, exec_id: str) -> Execution:
    """The execution's row, locked until ``cur``'s transaction ends. :raises NotFound: unknown (of ``kind``)."""
    execution = storage.get_execution(cur, kind, exec_id, lock=True)
    if execution is None:
        raise NotFound()
    return execution


def _append_locked(
    cur: Cursor, execution: Execution, events: Sequence[t.Any], rules: Rules, notify: bool
) -> AppendResult:
    """:func:`append_events` on an execution whose row the caller has locked in ``cur``'s transaction."""
    rendered = render(execution, events, rules)
    appends.insert_events(cur, execution["exec_id"], rendered.append)
    if notify:
        appends.notify(cur, execution["exec_id"], rendered.result.last_id)
    # Counted as inserted: the caller's transaction commits them, or rolls them back (rare).
    counters.APPENDS.inc(len(rendered.append.rows))
    return rendered.result


def _cancel_event(reason: str | None) -> dict[str, t.Any]:
    if reason is not None and (not isinstance(reason, str) or not reason):
        raise Invalid("reason must be a non-empty string")
    return {
        "type": "error",
        "data": {"status": "CANCELED", "error": {"message": reason or "canceled", "code": "canceled"}},
    }


def _end_locked(cur: Cursor, execution: Execution, event: dict[str, t.Any], rules: Rules, notify: bool) -> Execution:
    """Append one terminal ``event`` to a locked execution; return the row as it is after.

    The row lock is what makes it exactly one terminal event however many
    requests, workers and hosts race: the losers wait for it, then see the
    execution ended (SPEC §2).
    """
    if execution["terminal_event_id"] is not None:
        raise Conflict("the execution has already ended")
    result = _append_locked(cur, execution, [event], rules, notify)
    return {
        **execution,
        "status": result.status,
        "last_event_id": result.last_id,
        "terminal_event_id": result.last_id,
    }


#: ``appended(exec_id, before, tails)``: events ``before + 1 …`` were committed, as ``(type, envelope tail)``.
Appended = Callable[[str, int, Sequence[tuple[str, str]]], None]


class Producer:
    """Writes in transactions of its own, the wake-up after the commit: one round trip for an
    execution this producer has appended to before, two for the first append."""

    def __init__(
        self,
        db: Database,
        *,
        notify: bool = True,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        redact: Redactor | None = DEFAULT_REDACTOR,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        appended: Appended | None = None,
    ) -> None:
        self.db = db
        self.notify = notify
        #: Told of each batch stored by the one-round-trip path, after its commit: the worker's hub.
        self.appended = appended
        self.rules = Rules(max_event_bytes, redact, max_json_depth)
        self._known = own_transaction.KnownExecutions()

    def create_execution(self, kind: str, name: str, owner_id: str, **fields: t.Any) -> Execution:
        """Create an execution in its own transaction (see :func:`create_execution`).

        Its ``input`` goes through this producer's redactor unless ``redact=`` is given.
        """
        fields.setdefault("redact", self.rules.redact)
        fields.setdefault("max_json_depth", self.rules.max_json_depth)
        with self.db.transaction() as cur:
            return create_execution(cur, kind, name, owner_id, **fields)

    def append_events(self, exec_id: str, events: Sequence[t.Any], *, kind: str | None = None) -> AppendResult:
        """Append a batch in its own transaction (see :func:`append_events` for errors)."""
        with self.appending(exec_id, events, kind=kind) as pending:
            return pending.commit()

    @contextlib.contextmanager
    def appending(
        self, exec_id: str, events: Sequence[t.Any], *, kind: str | None = None
    ) -> Iterator[Pending[AppendResult]]:
        """:meth:`append_events`, held open until the caller has decided on the execution.

        An execution this producer appended to before is what it remembers of
        it, and nothing has been read yet: ``commit()`` is then one round trip.

        :raises NotFound: unknown execution (of ``kind``, when given).
        """
        known = self._known.get(exec_id)
        if known is not None and (kind is None or known["kind"] == kind) and not has_sequence(events):
            yield Pending(known, functools.partial(self._append_known, known, events))
        else:
            with own_transaction.locked(self.db, kind, exec_id) as held:
                yield Pending(held.execution, functools.partial(self._commit_locked, held, events))

    def _append_known(self, known: Execution, events: Sequence[t.Any]) -> AppendResult:
        batch = render_tails(known, events, self.rules)
        result = own_transaction.append_known(self.db, known["exec_id"], batch, notify=self.notify)
        if result is not None:
            if self.appended is not None:
                self.appended(known["exec_id"], result.first_id - 1, batch.tails)
            return result
        # Nothing was written: the execution has ended, and the locking path says so (Conflict).
        # Executions are never deleted and their owner never changes, so the caller's decision
        # on the remembered row stands for the locked one.
        with own_transaction.locked(self.db, known["kind"], known["exec_id"]) as held:
            return self._commit_locked(held, events)

    def _commit_locked(self, held: own_transaction.Locked, events: Sequence[t.Any]) -> AppendResult:
        result = held.commit(render(held.execution, events, self.rules), notify=self.notify)
        self._known.remember(held.execution)
        return result

    def cancel(self, exec_id: str, *, reason: str | None = None, kind: str | None = None) -> Execution:
        """Cancel an execution in a transaction of its own (see :func:`cancel` for errors)."""
        with self.canceling(exec_id, reason=reason, kind=kind) as pending:
            return pending.commit()

    @contextlib.contextmanager
    def canceling(
        self, exec_id: str, *, reason: str | None = None, kind: str | None = None
    ) -> Iterator[Pending[Execution]]:
        """:meth:`cancel`, held open on the locked row until the caller has decided on it.

        Cancels are rare: the wake-up simply rides in the same transaction.
        """
        event = _cancel_event(reason)
        with self.db.transaction() as cur:
            execution = _lock(cur, kind, exec_id)
            yield Pending(execution, functools.partial(_end_locked, cur, execution, event, self.rules, self.notify))

    def publish_chunks(self, exec_id: str, texts: Sequence[str], *, kind: str | None = None) -> None:
        """Send best-effort text chunks to the streams open now, in a transaction of its own (SPEC §5.2).

        Each text is redacted on its own; use :meth:`chunk_publisher` for a model's
        tokens, which catches secrets across chunk boundaries.

        :raises Invalid: a text that is not a non-empty string without NUL.
        :raises NotFound: unknown execution (of ``kind``, when given).
        :raises Conflict: it has ended.
        :raises Unavailable: this producer sends no NOTIFY, and chunks travel only by it.
        """
        for n, text in enumerate(texts):
            chunks.check_text(text, f"texts[{n}]")
        with self.publishing_chunks(exec_id, texts, kind=kind) as pending:
            pending.commit()

    @contextlib.contextmanager
    def publishing_chunks(
        self, exec_id: str, texts: Sequence[str], *, kind: str | None = None
    ) -> Iterator[Pending[None]]:
        """:meth:`publish_chunks` of ``texts`` already checked (:func:`chunks.check_text`), held
        open until the caller has decided on the execution (read, not locked).

        :raises Unavailable: this producer sends no NOTIFY.
        :raises NotFound: unknown execution (of ``kind``, when given).
        """
        if not self.notify:
            raise Unavailable("text chunks travel by LISTEN/NOTIFY, which STREAMAPP_NOTIFY=false turns off", 3600)
        # An id the API could never have made is unknown without a query (SPEC §2 "Robustness").
        if not EXEC_ID_PATTERN.fullmatch(exec_id):
            raise NotFound()
        with self.db.transaction() as cur:
            execution = storage.get_execution(cur, kind, exec_id)
            if execution is None:
                raise NotFound()
            yield Pending(execution, functools.partial(self._publish, cur, execution, texts))

    def _publish(self, cur: Cursor, execution: Execution, texts: Sequence[str]) -> None:
        if execution["terminal_event_id"] is not None:
            raise Conflict("the execution has ended: no chunk may follow complete or error")
        redact = self.rules.redact
        sent = [redact(text) for text in texts] if redact is not None else list(texts)
        chunks.publish(cur, execution["exec_id"], sent, secrets.token_hex(6), 0)

    def chunk_publisher(self, exec_id: str, **options: t.Any) -> chunks.ChunkPublisher:
        """A :class:`chunks.ChunkPublisher` for ``exec_id`` on this producer's database and redactor.

        ``options`` go to it as they are (``interval_s``, ``max_chars``, ``redact``).
        """
        options.setdefault("redact", self.rules.redact)
        return chunks.ChunkPublisher(self.db, exec_id, **options)
