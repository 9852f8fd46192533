-- One row per open stream, so the per-user stream limit holds across every
-- worker (SPEC §7). UNLOGGED: these rows are not worth a WAL write, and a
-- crash empties the table, which is right since it ends every stream too.
-- Each worker refreshes seen_at of its rows; rows of a worker that died
-- without cleaning up stop counting once seen_at grows stale.
CREATE UNLOGGED TABLE stream_slots (
    id       text PRIMARY KEY,
    user_id  text NOT NULL,
    worker   text NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stream_slots_user ON stream_slots (user_id, seen_at);
CREATE INDEX stream_slots_worker ON stream_slots (worker);
