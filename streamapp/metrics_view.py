"""``GET /metrics``: Prometheus text format, aggregated across gunicorn workers (SPEC §9).

The metric objects live in ``counters.py`` (no Flask). Under gunicorn
(``gunicorn.conf.py``) and ``python app.py`` alike every worker writes its
values to files in one ``PROMETHEUS_MULTIPROC_DIR``, and this view sums the
files of every worker, dead ones' counters included: whichever worker answers,
the figures are the server's. That mode exports no ``process_*`` series (they
would describe one worker only). In a single process without that directory
(tests, ``flask run``) the default registry is served.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from .state import current_state

bp = Blueprint("streamapp_metrics", __name__)


def _registry(metrics_dir: str | None) -> CollectorRegistry:
    if not metrics_dir:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    registry = _registry(current_state().settings.metrics_dir)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
