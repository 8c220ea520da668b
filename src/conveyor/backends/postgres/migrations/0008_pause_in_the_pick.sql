-- Schema version 8: a paused queue is checked again inside the statement that picks its
-- jobs. claim() looked once, before promoting and picking, and PL/pgSQL takes a fresh
-- snapshot per statement: a pause, then an enqueue, both committed between the look and
-- the pick, let the new job start on the paused queue (a contract test caught it once).
-- In one statement the snapshot that sees the new job sees the pause too. The first look
-- stays: it spares a paused queue the promotion of its due scheduled jobs.
CREATE OR REPLACE FUNCTION {p}.claim(worker text, queues text[], lim integer, lease float8 DEFAULT 30,
                                     at float8 DEFAULT NULL)
RETURNS SETOF {p}.jobs LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_ float8 := coalesce(at, {p}.epoch());
    token text := replace(gen_random_uuid()::text, '-', '');
    q text;
    got integer := 0;
    n integer;
BEGIN
    FOREACH q IN ARRAY queues LOOP
        EXIT WHEN got >= lim;
        CONTINUE WHEN EXISTS (SELECT 1 FROM {p}.queues WHERE name = q AND paused);
        UPDATE {p}.jobs SET state = 'queued'
        WHERE id IN (SELECT id FROM {p}.jobs
                     WHERE state = 'scheduled' AND queue = q AND run_at <= now_
                     ORDER BY run_at LIMIT 1000 FOR UPDATE SKIP LOCKED);
        -- MATERIALIZED: the locked pick runs exactly once, never re-run as a join.
        RETURN QUERY
        WITH picked AS MATERIALIZED (
            SELECT id FROM {p}.jobs
            WHERE state = 'queued' AND queue = q
              AND NOT EXISTS (SELECT 1 FROM {p}.queues WHERE name = q AND paused)
            ORDER BY priority DESC, id LIMIT lim - got FOR UPDATE SKIP LOCKED
        )
        UPDATE {p}.jobs AS j
        SET state = 'active', attempt = j.attempt + 1, started_at = now_,
            lease_owner = worker, lease_token = token, lease_expires = now_ + lease
        FROM picked WHERE j.id = picked.id
        RETURNING j.*;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END LOOP;
END
$$;
