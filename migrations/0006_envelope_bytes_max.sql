-- Replay pages sized from each execution's largest envelope (SPEC §8, issue 10).
--
-- A replay page reads a plain "ORDER BY id LIMIT n": no running byte count in
-- a window function, which cost more than half of the read. Its memory bound
-- comes from this column instead: the data lines of every envelope the
-- execution holds take at most envelope_bytes_max bytes, so n = PAGE_BYTES / (envelope_bytes_max + the
-- frame's fixed part) rows never exceed the page's byte budget
-- (storage.frames_after). The column only grows; retention leaves it as it is,
-- which keeps it an upper bound.
--
-- The default, 1000, covers most events without any write: only an envelope
-- above it fires the trigger (its WHEN is checked by PostgreSQL itself, no
-- function call), and the UPDATE writes only when the envelope is the largest
-- yet. The append already holds the execution's row lock, so this waits for
-- no one. A trigger rather than code in each append path, so that every way an
-- event is written — the producer's paths, a host application's own
-- transaction, a row edited by hand — keeps the bound true. The 1000 in the
-- column default and in the WHEN clause must stay equal.

ALTER TABLE executions ADD COLUMN envelope_bytes_max integer NOT NULL DEFAULT 1000;

-- The bytes of an envelope's data lines: the envelope itself, unless it holds a raw line
-- break (no producer writes one; a row edited by hand may), which replay splits into more
-- data lines exactly as storage.frames_after does.
CREATE FUNCTION streamapp_data_bytes(envelope text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN strpos(envelope, chr(10)) + strpos(envelope, chr(13)) = 0 THEN octet_length(envelope)
                ELSE octet_length(regexp_replace(envelope, '\r\n|\r|\n', chr(10) || 'data: ', 'g'))
           END
$$;

CREATE FUNCTION streamapp_envelope_bytes_max() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE executions SET envelope_bytes_max = streamapp_data_bytes(NEW.envelope)
    WHERE exec_id = NEW.exec_id AND envelope_bytes_max < streamapp_data_bytes(NEW.envelope);
    RETURN NULL;
END
$$;

-- Created before the backfill: it locks events against inserts until this
-- migration commits, so no event written meanwhile escapes both.
CREATE TRIGGER events_envelope_bytes_max
    AFTER INSERT OR UPDATE OF envelope, exec_id ON events
    FOR EACH ROW
    WHEN (octet_length(NEW.envelope) > 1000 OR strpos(NEW.envelope, chr(10)) + strpos(NEW.envelope, chr(13)) > 0)
    EXECUTE FUNCTION streamapp_envelope_bytes_max();

UPDATE executions e SET envelope_bytes_max = stored.bytes
FROM (SELECT exec_id, max(streamapp_data_bytes(envelope)) AS bytes FROM events GROUP BY exec_id) stored
WHERE e.exec_id = stored.exec_id AND stored.bytes > e.envelope_bytes_max;
