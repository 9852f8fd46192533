"""Whether this process can hold streams open without starving its other requests (issue 12).

A stream is a request that lasts minutes. Under gunicorn's gevent worker it
costs a greenlet; under the sync worker it holds the whole worker, and under
gthread one of a handful of threads — so a host app's own pages time out while
a few streams are open. Requests still work there (nothing is refused); the
host is told once, at start-up, and pointed at the guide.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

GUIDE = 'docs/integration.md ("Serving streams")'


def blocking_worker() -> str | None:
    """What in this process would block on an open stream, or ``None`` when streams are cheap.

    gevent's worker patches the socket module before the app is loaded, so a
    patched socket means greenlets; otherwise gunicorn's worker module tells
    sync from gthread (the master imported it before forking this worker).
    """
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("socket"):
        return None
    if "gunicorn.workers.gthread" in sys.modules:
        return "gunicorn's gthread worker (each open stream holds one of its threads)"
    if "gunicorn.workers.sync" in sys.modules:
        return "gunicorn's sync worker (each open stream holds the whole worker)"
    if "uwsgi" in sys.modules:
        return "uWSGI without gevent (each open stream holds a worker or thread)"
    return None


def warn_if_streams_block() -> None:
    """Log one warning when this process's server cannot hold streams beside other requests."""
    blocking = blocking_worker()
    if blocking is not None:
        log.warning(
            "streamapp is served by %s: while streams are open, other requests wait. "
            "Serve the stream paths with gunicorn's gevent worker (-k gevent); see %s",
            blocking,
            GUIDE,
        )
