-- A stream's connect in one round trip, with plans kept per connection (SPEC §5, §7, §8, issue 10).
--
-- Taking a slot was three statements parsed and planned on every connect, in a
-- round trip of its own after the execution's lookup. streamapp_take_slot is the
-- same statements in a function (slots.py); streamapp_open_stream looks the
-- execution up and, when the caller's authorization rule can be decided here
-- (the default one: the owner, or an admin), takes the slot in the same call.
-- Run both in a transaction that does not wait for its WAL flush: stream counts
-- are not durable state (slots.py).

-- One more stream of p_user on p_worker, unless p_user holds p_limit streams on
-- every worker together (rows older than p_stale_s seconds no longer count). The
-- advisory lock, held to the end of the transaction, makes sum-then-add atomic for
-- one user across workers.
CREATE FUNCTION streamapp_take_slot(
    p_user text, p_worker text, p_limit integer, p_stale_s double precision
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('streamapp-slots:' || p_user));
    INSERT INTO stream_counts AS c (user_id, worker, streams)
    SELECT p_user, p_worker, 1
    WHERE (SELECT coalesce(sum(s.streams), 0) FROM stream_counts s
           WHERE s.user_id = p_user AND s.seen_at > now() - make_interval(secs => p_stale_s)) < p_limit
    ON CONFLICT (user_id, worker) DO UPDATE SET streams = c.streams + 1, seen_at = now();
    RETURN FOUND;
END
$$;

-- The execution p_exec_id of p_kind (no row when there is none) and whether a slot
-- of p_user was taken for its stream: only when p_take, when p_user may read it by
-- the default rule (p_any_owner: an admin; else p_user owns it), and when a stream
-- from p_cursor has anything to send (the execution has not ended at or before
-- p_cursor, SPEC §5.4's 204).
CREATE FUNCTION streamapp_open_stream(
    p_exec_id text, p_kind text, p_cursor bigint, p_take boolean, p_user text, p_any_owner boolean,
    p_worker text, p_limit integer, p_stale_s double precision
) RETURNS TABLE (
    exec_id text, kind text, name text, status text, input jsonb, output_schema jsonb, owner_id text,
    last_event_id bigint, last_sequence bigint, terminal_event_id bigint, created_at timestamptz,
    slot_taken boolean
) LANGUAGE plpgsql AS $$
BEGIN
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
