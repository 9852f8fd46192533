"""The Prometheus metrics streamapp exports, and nothing else (SPEC §9).

No Flask here: the hub, the subscriber, the stream and the producer count
through this module, and ``metrics_view.py`` (the http layer) serves them
(issue 14: ``hub → metrics → state ⇢ hub`` was a cycle). The catalog is a pure
module; it names the event types.

Under gunicorn every worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py`` or ``app.py`` before
this module is first imported) and ``/metrics`` sums them, so a killed
worker's counters stay counted and its open-stream gauges are dropped.

The hot path pays per batch, never per event or per stream of a batch:
counters move with ``inc(n)`` and histograms observe once per batch written.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping

from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

from .catalog import CATALOG
from .catalog import KINDS

#: The ``kind`` of open and opened streams: an execution's kind, or ``multiplex`` for a stream of
#: many executions (SPEC §5.6), whatever kinds it lists.
STREAM_KINDS = (*KINDS, "multiplex")
#: Why a stream was refused (SPEC §9): 429 per user, 503 per worker, 503 shutting down, 503 database away.
REFUSAL_REASONS = ("user_limit", "worker_limit", "shutdown", "unavailable")
#: The ``type`` of events sent whose type is not in the catalog. Producers may add any number of
#: types of their own (SPEC §4); one label value each would grow the series without bound.
OTHER_TYPE = "other"
SENT_TYPES = (*CATALOG, OTHER_TYPE)

# -- SPEC §9 ------------------------------------------------------------------

OPEN_STREAMS = Gauge(
    "streamapp_open_streams",
    "Streams open now, by execution kind; 'multiplex' for many executions.",
    ["kind"],
    multiprocess_mode="livesum",
)
STREAMS_OPENED = Counter(
    "streamapp_streams_opened_total",
    "Streams opened (200 sent), by execution kind ('multiplex': many executions).",
    ["kind"],
)
STREAMS_REFUSED = Counter("streamapp_streams_refused_total", "Stream requests refused, by reason.", ["reason"])
STREAM_SECONDS = Histogram(
    "streamapp_stream_seconds",
    "How long streams stayed open, from the request to the last byte.",
    buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 450, 600, 900, 1800, 3600),
)
TIME_TO_FIRST_EVENT = Histogram(
    "streamapp_time_to_first_event_seconds",
    "From a stream's request to its first event frame written (streams that received one).",
    buckets=(0.0005, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMIT_TO_SEND = Histogram(
    "streamapp_commit_to_send_seconds",
    "From an event's commit (its ts) to its frame written; one observation per live batch written, "
    "with the batch's oldest event.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5, 10),
)
EVENTS_SENT = Counter(
    "streamapp_events_sent_total",
    "Event frames written to streams (replay and live, text chunks as llm_chunk), by type; "
    "types outside the catalog as 'other'.",
    ["type"],
)
CHUNKS_DROPPED = Counter("streamapp_chunks_dropped_total", "Text chunks dropped for streams that fell behind.")
SLOW_CLIENT_DISCONNECTS = Counter(
    "streamapp_slow_client_disconnects_total", "Streams ended because their client stopped reading (send timeout)."
)
LISTENER_RECONNECTS = Counter("streamapp_listener_reconnects_total", "LISTEN connections (re)opened by hubs.")
APPENDS = Counter("streamapp_appends_total", "Durable events appended through this server's producers.")
NOTIFICATION_QUEUE_USAGE = Gauge(
    "streamapp_notification_queue_usage",
    "PostgreSQL's pg_notification_queue_usage(), 0 to 1, read by each hub's maintenance round.",
    multiprocess_mode="livemax",  # one database-wide figure: the workers' readings are not added up
)

# -- the hub's own work (PERFORMANCE.md, bench/) --------------------------------

NOTIFICATIONS = Counter("streamapp_notifications_total", "NOTIFY wake-ups received by listeners.")
CHUNK_NOTIFICATIONS = Counter("streamapp_chunk_notifications_total", "NOTIFY payloads carrying text chunk parts.")
EVENT_READS = Counter("streamapp_event_reads_total", "Reads of new events by hubs (one serves every stream).")
SAFETY_CHECKS = Counter("streamapp_safety_checks_total", "Batched safety-check queries.")
DELIVERED = Counter("streamapp_events_fanned_out_total", "Event deliveries handed to streams by hubs.")
DIRECT_WRITES = Counter("streamapp_direct_writes_total", "Batches written straight to parked streams' sockets.")
REPLAYS = Counter(
    "streamapp_replays_total",
    "Stream replays, by where they read: the hub's recent frames ('memory') or the table ('table').",
    ["source"],
)
OVERFLOWS = Counter("streamapp_stream_overflows_total", "Streams that fell behind and re-read the table.")
CHUNKS_INCOMPLETE = Counter(
    "streamapp_chunks_incomplete_total", "Split text chunks forgotten because a part never arrived."
)

# Every label value SPEC §9 names exists from start-up, at 0: a rate() over a
# series that appears only at its first increment misses that increment, and an
# alert on a series that does not exist yet never fires.
_OPEN = {kind: OPEN_STREAMS.labels(kind) for kind in STREAM_KINDS}
_OPENED = {kind: STREAMS_OPENED.labels(kind) for kind in STREAM_KINDS}
_REFUSED = {reason: STREAMS_REFUSED.labels(reason) for reason in REFUSAL_REASONS}
_SENT = {name: EVENTS_SENT.labels(name) for name in SENT_TYPES}
_REPLAYS = {source: REPLAYS.labels(source) for source in ("memory", "table")}

_TS = b'"ts":"'


def stream_opened(kind: str) -> None:
    """A stream of ``kind`` answered 200: counted opened and open."""
    _OPENED[kind].inc()
    _OPEN[kind].inc()


def stream_closed(kind: str, seconds: float) -> None:
    """A stream of ``kind`` ended after ``seconds``."""
    _OPEN[kind].dec()
    STREAM_SECONDS.observe(seconds)


def stream_refused(reason: str) -> None:
    """A stream request was refused; ``reason`` is one of :data:`REFUSAL_REASONS`."""
    _REFUSED[reason].inc()


def events_sent(types: Mapping[str, int]) -> None:
    """Count one written batch's frames: one increment per type, not per event."""
    for name, count in types.items():
        (_SENT.get(name) or _SENT[OTHER_TYPE]).inc(count)


def replayed(source: str) -> None:
    """A stream's replay read from ``source``: ``memory`` (the hub's recent frames) or ``table``."""
    _REPLAYS[source].inc()


def first_event(connected_at: float) -> None:
    """A stream wrote its first event frame; ``connected_at`` is ``time.monotonic()`` at its request."""
    TIME_TO_FIRST_EVENT.observe(time.monotonic() - connected_at)


def commit_to_send(frame: bytes) -> None:
    """Observe the age of the event framed in ``frame`` (a batch's oldest), now that it is written.

    The age runs from the envelope's ``ts``, stamped by the producer in the
    appending transaction just before its commit (SPEC §4), on the producer's
    clock. One search and one parse per batch; a frame without a ``ts``
    (a text chunk) is not observed.
    """
    start = frame.find(_TS)
    if start < 0:
        return
    start += len(_TS)
    end = frame.find(b'"', start)
    try:
        stamped = datetime.datetime.fromisoformat(frame[start:end].decode())
    except (ValueError, UnicodeDecodeError):
        return
    COMMIT_TO_SEND.observe(max(0.0, time.time() - stamped.timestamp()))
