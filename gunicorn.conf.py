"""gunicorn settings for streamapp: gevent workers sized for long-lived streams (SPEC §9).

Run: ``gunicorn -c gunicorn.conf.py app:app``. gunicorn's own flags and
``GUNICORN_CMD_ARGS`` override these (``--bind``, ``--workers``).
"""

import glob
import multiprocessing
import os
import shutil
import sys
import tempfile

bind = "127.0.0.1:8000"
worker_class = "gevent"
workers = multiprocessing.cpu_count()
# Each open stream is one connection; leave room above the per-worker stream
# limit (STREAMAPP_MAX_STREAMS_PER_WORKER, 12,000) for API calls.
worker_connections = 13000
# Streams end themselves on shutdown (post_worker_init below), in about a second; this is
# only the bound after which gunicorn kills what is left.
graceful_timeout = 15
timeout = 30
keepalive = 5
# gunicorn's longest request line short of none at all (its default is 4094): a multiplexed stream
# may list 100 ids of 64 characters, about 7.5 KB of query string (SPEC §5.6).
limit_request_line = 8190
# Generation-1 collections between two full ones in a worker (Python's default: 10); see _quiet_gc.
GC_FULL_EVERY = 100
# The pool and the hub are made in each worker, never in the master.
preload_app = False
# One shared control socket per user would make two instances on a machine collide.
control_socket_disable = True
# Off, as gunicorn's own default is: a log line per request was a twentieth of a worker's time
# under a steady append load (issue 10), and the proxy in front logs every request already.
# `--access-logfile -` (or GUNICORN_CMD_ARGS) turns it on; `python app.py` does.
accesslog = None
# The path only (%(U)s), never the query string (%(r)s or %(q)s): stream
# tickets travel in it (SPEC §7, issue 6), and no secret goes to a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'
# Every value in every log line escaped: a CR LF in a path cannot forge a line (SPEC §2, issue 11).
# It also sends the application's log lines to the error log, in its format. With
# STREAMAPP_LOG_FORMAT=json (read by the logger class itself, before the app loads) all three logs
# write one JSON object per line, and an access record has the path and never the query string:
# access_log_format is not used then (SPEC §9).
logger_class = "streamapp.logs.GunicornLogger"


def on_starting(server):
    # Workers write their metrics here; /metrics sums them (prometheus-client
    # multiprocess mode, SPEC §9). Set before any worker imports prometheus_client.
    # (`python app.py` sets it before it builds the app, which imports it.)
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streamapp-metrics-")
        server._streamapp_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    elif "prometheus_client" not in sys.modules:
        # A directory of the operator's: files of an earlier run would be summed
        # with this one's, dead workers' gauges included. Nothing here wrote yet.
        for stale in glob.glob(os.path.join(given, "*_[0-9]*.db")):
            os.remove(stale)


def child_exit(server, worker):
    # A dead worker's counters stay in the sum; its live gauges (open streams) go.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    created = getattr(server, "_streamapp_metrics_dir", None)
    if created:
        shutil.rmtree(created, ignore_errors=True)


def post_fork(server, worker):
    # psycopg2 yields to other greenlets only through a wait callback.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def post_worker_init(worker):
    # SPEC §5.4, §9: from SIGTERM on, this worker takes no new stream (503 with a jittered
    # Retry-After) and ends its open ones with a jittered retry:, so it exits long before
    # graceful_timeout. On its own, gunicorn's gevent worker only closes its listener (within
    # a second) and waits for every open request, and a stream lasts minutes; meanwhile its
    # keep-alive connections still bring it new requests, streams included (issue 13).
    import signal

    import gevent

    _quiet_gc()
    state = worker.wsgi.extensions.get("streamapp") if hasattr(worker.wsgi, "extensions") else None
    if state is None:
        return
    exit_handler = worker.handle_exit

    def on_sigterm(sig, frame):
        exit_handler(sig, frame)
        # In a greenlet, not in the handler, which may interrupt any greenlet mid-step (gunicorn #1126).
        gevent.spawn(state.hub.stop)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: no system call cut short

    def stop_streams_when_not_alive():
        # The other ways out (max_requests, the reloader, a lost master) only clear worker.alive.
        while worker.alive and not state.hub.stopping:
            gevent.sleep(0.5)
        if not state.hub.stopping:
            state.hub.stop()

    gevent.spawn(stop_streams_when_not_alive)
    if state.hub.background:
        # Retention and abandoned-execution sweeps (SPEC §2, §9) must run on a worker that
        # no request has reached yet; otherwise the hub starts with the first stream.
        state.hub.start()


def _quiet_gc():
    # SPEC §8: a full (generation-2) collection walks every object the worker holds and blocks
    # the gevent loop meanwhile: 30-40 ms at 1,000 streams, 85-430 ms at 10,000 (ten of them while
    # 10,000 streams connect), the only loop stalls over 15 ms seen under the bench's load. What
    # the worker loaded (Flask, the app, the catalog: ~56,000 objects) lives as long as it does:
    # frozen, no collection walks it again. Full collections ten times rarer: the young
    # generations still free short-lived cycles at once, and nearly all garbage goes by refcount.
    import gc

    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_EVERY)
