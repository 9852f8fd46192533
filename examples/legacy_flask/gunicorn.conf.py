"""gunicorn settings for the example: gevent by default, so streams and pages share a worker.

A host that must keep its sync workers runs this same app twice, pages with
``-k sync`` and streams with ``-k gevent``, and routes the stream paths to the
second at the proxy (docs/integration.md, "Serving streams").
"""

bind = "127.0.0.1:5000"
worker_class = "gevent"
workers = 2
worker_connections = 2000
graceful_timeout = 15
accesslog = "-"
# The path only: stream tickets travel in query strings, and no secret goes to a log.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'


def post_fork(server, worker):
    # Under gevent, psycopg2 yields to other greenlets only through a wait callback.
    if server.cfg.worker_class_str == "gevent":
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
