"""Background rounds in each worker: retention and the abandoned-execution sweep (SPEC §2, §9).

Started by the worker's hub (``Hub(background=…)``), never at import or in
gunicorn's master; the hub's ``stop()`` kills them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import gevent
import psycopg2

from .errors import StreamappError

log = logging.getLogger(__name__)


def repeat(every_s: float, one_round: Callable[[], None], what: str) -> None:
    """Run ``one_round()`` every ``every_s`` seconds until killed, with jitter so workers do not line up.

    A round that fails is retried at the next one: a database outage was
    logged once by the pool, any other database error is logged here as
    ``what`` failed.
    """
    while True:
        gevent.sleep(every_s * random.uniform(0.8, 1.2))
        try:
            one_round()
        except StreamappError:
            continue
        except psycopg2.Error:
            log.warning("%s failed; the next round retries", what, exc_info=True)
