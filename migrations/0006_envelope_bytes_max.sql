-- What replay needs to know about an execution's envelopes, kept by PostgreSQL itself
-- (SPEC §5, §8, issue 10).
--
-- envelope_bytes_max: the data lines of every envelope the execution holds take
-- at most this many bytes. A replay page is a plain "ORDER BY id LIMIT n" with
-- n = PAGE_BYTES / (envelope_bytes_max + the frame's fixed part), so it never
-- exceeds its byte budget without a running byte count in a window function,
-- which cost more than the rest of the read together (streamapp/replay.py).
-- It only grows; retention leaves it as it is, which keeps it an upper bound.
--
-- raw_line_breaks: some envelope of the execution holds a raw CR or LF. No
-- producer writes one (json.dumps escapes them); a row edited by hand may, and
-- replay must then split it into data lines (SPEC §5). Knowing it per
-- execution spares replay a scan of every envelope for line breaks.
--
-- The default, 1000, covers most events without any write: only an envelope
-- above it, or with a raw line break, fires the trigger (its WHEN is checked by
-- PostgreSQL itself, no function call), and the UPDATE writes only when the
-- envelope is the largest yet or the first with a line break. The append
-- already holds the execution's row lock, so this waits for no one. A trigger
-- rather than code in each append path, so that every way an event is written
-- — the producer's paths, a host application's own transaction, a row edited
-- by hand — keeps both true. The 1000 in the column default and in the WHEN
-- clause must stay equal.

ALTER TABLE executions
    ADD COLUMN envelope_bytes_max integer NOT NULL DEFAULT 1000,
    ADD COLUMN raw_line_breaks boolean NOT NULL DEFAULT false;

CREATE FUNCTION streamapp_raw_line_breaks(envelope text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT strpos(envelope, chr(10)) + strpos(envelope, chr(13)) > 0
$$;

-- The bytes of an envelope's data lines: the envelope itself, or, with raw line breaks,
-- what replay makes of it (each line its own "data: " line, as framing.event_frame does).
CREATE FUNCTION streamapp_data_bytes(envelope text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN streamapp_raw_line_breaks(envelope)
                THEN octet_length(regexp_replace(envelope, '\r\n|\r|\n', chr(10) || 'data: ', 'g'))
                ELSE octet_length(envelope)
           END
$$;

CREATE FUNCTION streamapp_envelope_seen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bytes integer := streamapp_data_bytes(NEW.envelope);
    raw boolean := streamapp_raw_line_breaks(NEW.envelope);
BEGIN
    UPDATE executions
    SET envelope_bytes_max = greatest(envelope_bytes_max, bytes), raw_line_breaks = raw_line_breaks OR raw
    WHERE exec_id = NEW.exec_id AND (envelope_bytes_max < bytes OR (raw AND NOT raw_line_breaks));
    RETURN NULL;
END
$$;

-- Created before the backfill: it locks events against inserts until this
-- migration commits, so no event written meanwhile escapes both.
CREATE TRIGGER events_envelope_seen
    AFTER INSERT OR UPDATE OF envelope, exec_id ON events
    FOR EACH ROW
    WHEN (octet_length(NEW.envelope) > 1000 OR strpos(NEW.envelope, chr(10)) + strpos(NEW.envelope, chr(13)) > 0)
    EXECUTE FUNCTION streamapp_envelope_seen();

UPDATE executions e
SET envelope_bytes_max = greatest(e.envelope_bytes_max, stored.bytes), raw_line_breaks = stored.raw
FROM (
    SELECT exec_id, max(streamapp_data_bytes(envelope)) AS bytes, bool_or(streamapp_raw_line_breaks(envelope)) AS raw
    FROM events
    GROUP BY exec_id
) stored
WHERE e.exec_id = stored.exec_id AND (stored.bytes > e.envelope_bytes_max OR stored.raw);
