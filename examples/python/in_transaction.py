"""Append progress inside your own database transaction.

Your job's state and its events commit together or not at all: a stream
never shows progress your database rolled back. Run with the database's
address (`flask --app app db url` prints it; the embedded database is up
while `python app.py` runs):

    DATABASE_URL=$(.venv/bin/flask --app app db url) PYTHONPATH=. .venv/bin/python examples/python/in_transaction.py

The execution belongs to the user whose id is STREAMAPP_OWNER_ID (default 1,
the development user on a fresh ./var/).
"""

from __future__ import annotations

import os

import psycopg2

from streamapp import append_events
from streamapp import create_execution

conn = psycopg2.connect(os.environ["DATABASE_URL"])
owner_id = os.environ.get("STREAMAPP_OWNER_ID", "1")

with conn, conn.cursor() as cur:
    # Stands in for your application's own table.
    cur.execute("CREATE TEMP TABLE jobs (id serial PRIMARY KEY, state text NOT NULL)")
    cur.execute("INSERT INTO jobs (state) VALUES ('queued') RETURNING id")
    job_id = cur.fetchone()[0]
    execution = create_execution(cur, "workflow", "nightly-report", owner_id)
    exec_id = execution["exec_id"]
    append_events(cur, exec_id, [{"type": "workflow_start", "data": {"workflow_id": "nightly-report"}}])

with conn:  # the job's state and the event commit together
    with conn.cursor() as cur:
        cur.execute("UPDATE jobs SET state = 'done' WHERE id = %s", (job_id,))
        append_events(cur, exec_id, [{"type": "complete", "data": {"status": "SUCCESS"}}])

conn.close()
print(f"/api/v0/executions/workflows/{exec_id}/stream")
