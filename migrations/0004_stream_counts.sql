-- Per-user stream counts, one row per (user, worker), replacing one row per
-- stream: a connect then sums a few rows (one per worker) instead of counting
-- every open stream of the user, so its cost does not grow with the streams a
-- user holds (issue 4). Each worker's hub rewrites its own rows from what it
-- holds in memory at every maintenance round, so a give-back that failed is
-- corrected there; rows of a worker that died stop counting once seen_at is
-- stale. UNLOGGED for the reasons stream_slots was: a crash ends every stream.
DROP TABLE stream_slots;
CREATE UNLOGGED TABLE stream_counts (
    user_id  text NOT NULL,
    worker   text NOT NULL,
    streams  integer NOT NULL CHECK (streams >= 0),
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, worker)
);
CREATE INDEX stream_counts_worker ON stream_counts (worker);
