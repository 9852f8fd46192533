"""``GET /metrics``: Prometheus text format, aggregated across gunicorn workers (SPEC §9).

Under gunicorn, ``gunicorn.conf.py`` gives every worker one
``PROMETHEUS_MULTIPROC_DIR`` and this endpoint sums the workers' files; in a
single process (tests, ``flask run``) the default registry is served.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from .state import current_state

bp = Blueprint("streamapp_metrics", __name__)

OPEN_STREAMS = Gauge("streamapp_open_streams", "Streams open now.", multiprocess_mode="livesum")
STREAMS_OPENED = Counter("streamapp_streams_opened", "Streams opened.")
STREAMS_REFUSED = Counter("streamapp_streams_refused", "Streams refused by a limit.", ["limit"])
CHUNK_NOTIFICATIONS = Counter("streamapp_chunk_notifications", "NOTIFY payloads carrying text chunk parts.")
NOTIFICATIONS = Counter("streamapp_notifications", "NOTIFY wake-ups received by listeners.")
EVENT_READS = Counter("streamapp_event_reads", "Reads of new events by hubs (one serves every stream).")
SAFETY_CHECKS = Counter("streamapp_safety_checks", "Batched safety-check queries.")
DELIVERED = Counter("streamapp_events_fanned_out", "Event deliveries queued to streams.")
DIRECT_WRITES = Counter("streamapp_direct_writes", "Batches written straight to parked streams' sockets.")
OVERFLOWS = Counter("streamapp_stream_overflows", "Streams that fell behind and re-read the table.")
LISTENER_RECONNECTS = Counter("streamapp_listener_reconnects", "Listener connections (re)opened.")
CHUNKS_DROPPED = Counter("streamapp_chunks_dropped", "Text chunks dropped for slow streams.")
CHUNKS_INCOMPLETE = Counter(
    "streamapp_chunks_incomplete", "Split text chunks forgotten because a part never arrived."
)


def _registry() -> CollectorRegistry:
    if not current_state().settings.metrics_dir:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
