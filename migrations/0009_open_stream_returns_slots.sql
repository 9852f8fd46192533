-- A stream's connect also gives back the slots of its user's streams on this worker that
-- ended since the last give-back (issue 10).
--
-- A stream whose client hung up gives its slot back a moment later, with the others
-- of that moment, instead of in a round trip of its own (slots.py). A new stream of
-- the same user on the same worker must not be refused for those: its connect
-- subtracts them first, in its own round trip, whether or not it takes a slot.

DROP FUNCTION streamapp_open_stream(
    text, text, bigint, boolean, text, boolean, text, integer, double precision
);

-- As in 0008, after lowering p_user's count on p_worker by p_returned (never below
-- zero). The lowering takes no advisory lock: a take elsewhere that reads the old,
-- higher count meanwhile refuses rather than admits.
CREATE FUNCTION streamapp_open_stream(
    p_exec_id text, p_kind text, p_cursor bigint, p_take boolean, p_user text, p_any_owner boolean,
    p_worker text, p_limit integer, p_stale_s double precision, p_returned integer
) RETURNS TABLE (
    exec_id text, kind text, name text, status text, input jsonb, output_schema jsonb, owner_id text,
    last_event_id bigint, last_sequence bigint, terminal_event_id bigint, created_at timestamptz,
    slot_taken boolean
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_returned > 0 THEN
        UPDATE stream_counts AS c SET streams = greatest(c.streams - p_returned, 0)
        WHERE c.user_id = p_user AND c.worker = p_worker;
    END IF;
    RETURN QUERY
    SELECT x.exec_id, x.kind, x.name, x.status, x.input, x.output_schema, x.owner_id,
           x.last_event_id, x.last_sequence, x.terminal_event_id, x.created_at,
           -- CASE, not AND: it fixes the order, so no slot is taken for a stream that will not run.
           CASE WHEN p_take AND (p_any_owner OR x.owner_id = p_user)
                     AND (x.terminal_event_id IS NULL OR p_cursor < x.terminal_event_id)
                THEN streamapp_take_slot(p_user, p_worker, p_limit, p_stale_s)
                ELSE false
           END
    FROM executions x
    WHERE x.exec_id = p_exec_id AND x.kind = p_kind;
END
$$;
