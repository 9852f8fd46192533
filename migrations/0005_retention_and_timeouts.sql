-- Retention and abandoned executions (SPEC §2, §9, issue 13).
--
-- updated_at already is "the last event, or creation when none": only an
-- append moves it (storage._BUMP_COUNTER), and nothing follows the terminal
-- event, so on an ended execution it is when it ended. It is deliberately not
-- indexed: every append updates it, and an index on it would turn each of
-- those row updates from HOT into a write to every index of the table. The
-- partial indexes below key on created_at (never updated; updated_at >=
-- created_at, so "updated_at < cutoff" implies "created_at < cutoff") and
-- filter on columns an append changes at most once, at its terminal event.

-- Set by retention once every event of an ended execution is gone, so later
-- runs skip it instead of revisiting every execution that ever ended.
ALTER TABLE executions ADD COLUMN pruned_at timestamptz;

-- Ended executions whose events retention has not removed yet.
CREATE INDEX executions_prunable ON executions (created_at)
    WHERE terminal_event_id IS NOT NULL AND pruned_at IS NULL;

-- Executions still open: what the abandoned-execution sweeper looks through.
CREATE INDEX executions_open ON executions (created_at)
    WHERE terminal_event_id IS NULL;
