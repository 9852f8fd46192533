-- The statements every append and every live read run, as functions (SPEC §8, issue 10).
--
-- Sent as text, the append's statement and the page read were parsed and planned
-- again on every call: about 200 µs of PostgreSQL CPU each, more than executing
-- them (bench: 450 → 260 µs per append, 200 → 60 µs per read). PL/pgSQL keeps the
-- plans of its statements for the life of the connection, and a function works
-- through any pooler, where a session's PREPARE would not. The SQL is the same the
-- code sent before; appends.py and replay.py say what each call is for.

-- Store `p_types`/`p_tails` as the next events of an execution that has not ended:
-- the row's own UPDATE takes its lock and hands the ids to the INSERT, so ids are
-- gap-free and in commit order; each envelope is its id spliced in front of its
-- pre-rendered tail. Returns, and keeps in the session setting streamapp.append for
-- the wake-up after COMMIT, "id before the first new one:status"; NULL, with nothing
-- written, when the execution has ended or does not exist.
CREATE FUNCTION streamapp_append(
    p_exec_id text, p_count integer, p_status text, p_terminal_offset integer,
    p_ts timestamptz, p_types text[], p_tails text[]
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text;
BEGIN
    WITH bumped AS (
        UPDATE executions
        SET last_event_id = last_event_id + p_count,
            status = COALESCE(p_status, status),
            terminal_event_id = last_event_id + p_terminal_offset,
            updated_at = clock_timestamp()
        WHERE exec_id = p_exec_id AND terminal_event_id IS NULL
        RETURNING last_event_id - p_count AS before, status
    ), stored AS (
        INSERT INTO events (exec_id, id, type, created_at, envelope)
        SELECT p_exec_id, b.before + e.n, e.type, p_ts, '{"id":' || (b.before + e.n) || e.tail
        FROM bumped b, unnest(p_types, p_tails) WITH ORDINALITY AS e(type, tail, n)
    )
    SELECT b.before || ':' || b.status INTO outcome FROM bumped b;
    PERFORM set_config('streamapp.append', coalesce(outcome, ''), false);
    RETURN outcome;
END
$$;

-- After streamapp_append's COMMIT, in a transaction of its own: what it stored, and
-- (p_notify) the wake-up naming the new last id, formatted by p_format.
CREATE FUNCTION streamapp_wake_after_append(
    p_notify boolean, p_channel text, p_format text, p_exec_id text, p_count integer
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text := current_setting('streamapp.append');
BEGIN
    IF p_notify AND outcome <> '' THEN
        PERFORM pg_notify(p_channel, format(p_format, p_exec_id, split_part(outcome, ':', 1)::bigint + p_count));
    END IF;
    RETURN outcome;
END
$$;

-- A page of stored events after `p_after` as SSE frames (SPEC §5), in id order, then
-- one row (p_limit or fewer, no type) holding the page size n: as many frames as fit
-- in p_max_bytes when each takes the execution's largest envelope plus p_overhead.
-- No row at all for an unknown execution. An envelope holding a raw line break is
-- split into data lines exactly as framing.event_frame splits it.
CREATE FUNCTION streamapp_frames_after(
    p_exec_id text, p_after bigint, p_limit integer, p_max_bytes integer, p_overhead integer
) RETURNS TABLE (id bigint, type text, frame varchar) LANGUAGE plpgsql STABLE AS $$
DECLARE
    n integer;
    raw boolean;
BEGIN
    SELECT least(p_limit, greatest(1, p_max_bytes / (x.envelope_bytes_max + p_overhead))), x.raw_line_breaks
    INTO n, raw
    FROM executions x
    WHERE x.exec_id = p_exec_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF raw THEN
        RETURN QUERY
        SELECT e.id, e.type,
               ('id: ' || e.id || (chr(10) || 'event: ') || e.type || (chr(10) || 'data: ')
                || regexp_replace(e.envelope, '\r\n|\r|\n', chr(10) || 'data: ', 'g')
                || (chr(10) || chr(10)))::varchar
        FROM events e
        WHERE e.exec_id = p_exec_id AND e.id > p_after
        ORDER BY e.id
        LIMIT n;
    ELSE
        RETURN QUERY
        SELECT e.id, e.type,
               ('id: ' || e.id || (chr(10) || 'event: ') || e.type || (chr(10) || 'data: ')
                || e.envelope || (chr(10) || chr(10)))::varchar
        FROM events e
        WHERE e.exec_id = p_exec_id AND e.id > p_after
        ORDER BY e.id
        LIMIT n;
    END IF;
    id := n;
    type := NULL;
    frame := NULL;
    RETURN NEXT;
END
$$;
