-- Conveyor on PostgreSQL, schema version 1. `{p}` is the schema (the app's prefix).
-- Times are epoch seconds (float8), as in every Conveyor record; the views show them as
-- timestamptz for people. Functions take `at` (epoch seconds) so tests can inject a
-- clock; NULL, the default, means the database's own clock.

CREATE FUNCTION {p}.epoch() RETURNS float8 LANGUAGE sql VOLATILE
AS $$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

-- Columns in JobRecord's field order, so a row maps onto a record by position.
CREATE TABLE {p}.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task          text    NOT NULL,
    queue         text    NOT NULL,
    state         text    NOT NULL CHECK (state IN ('scheduled', 'queued', 'active', 'waiting',
                                                    'completed', 'dead', 'cancelled')),
    payload       text    NOT NULL,
    priority      integer NOT NULL DEFAULT 0,
    attempt       integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 1,
    retries       integer NOT NULL DEFAULT 0,
    timeout       float8,
    run_at        float8  NOT NULL,
    enqueued_at   float8  NOT NULL,
    started_at    float8,
    finished_at   float8,
    unique_key    text,
    meta          jsonb,
    lease_owner   text,
    lease_token   text,
    lease_expires float8,
    result        text,
    error         text,
    attempts      jsonb,
    progress      float8
);

-- Partial indexes cover only live states: a million finished jobs cost the hot paths
-- (enqueue, claim, finish, lease recovery) nothing but their heap pages.
CREATE INDEX jobs_ready ON {p}.jobs (queue, priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_due ON {p}.jobs (queue, run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_leases ON {p}.jobs (lease_expires) WHERE state = 'active';
CREATE UNIQUE INDEX jobs_unique ON {p}.jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'active', 'waiting');
CREATE INDEX jobs_finished ON {p}.jobs (state, finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');

CREATE TABLE {p}.logs (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  bigint  NOT NULL,
    at      float8  NOT NULL,
    message text    NOT NULL,
    fields  jsonb
);
CREATE INDEX logs_job ON {p}.logs (job_id);

CREATE TABLE {p}.workers (
    id          text PRIMARY KEY,
    host        text    NOT NULL,
    pid         integer NOT NULL,
    queues      text    NOT NULL,
    concurrency integer NOT NULL,
    started_at  float8  NOT NULL,
    last_seen   float8  NOT NULL,
    active      integer NOT NULL,
    processed   bigint  NOT NULL
);

CREATE TABLE {p}.queues (
    name      text PRIMARY KEY,
    paused    boolean NOT NULL DEFAULT false,
    paused_at float8
);

-- The last tick each schedule enqueued, for leaderless scheduling.
CREATE TABLE {p}.schedules (
    name      text PRIMARY KEY,
    last_tick float8 NOT NULL
);

-- Workers LISTEN on "<schema>.wake"; the payload is only a queue name. One statement
-- notifies each of its queues once, and PostgreSQL folds equal notifications of one
-- transaction into one, delivered at commit: a rolled-back enqueue wakes nobody.
CREATE FUNCTION {p}.wake(queues text[]) RETURNS integer LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    q text;
    n integer := 0;
BEGIN
    FOR q IN SELECT DISTINCT unnest(queues) LOOP
        PERFORM pg_notify('{p}.wake', q);
        n := n + 1;
    END LOOP;
    RETURN n;  -- how many queues were woken
END
$$;

CREATE FUNCTION {p}.notify_inserted() RETURNS trigger LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM {p}.wake(array_agg(DISTINCT queue)) FROM inserted;
    RETURN NULL;
END
$$;

-- Any insert wakes workers, from Conveyor or from plain SQL in an operator's session.
CREATE TRIGGER jobs_inserted AFTER INSERT ON {p}.jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION {p}.notify_inserted();

-- Lease up to `lim` ready jobs from `queues`, the first queue drained first; within a
-- queue, higher priority first, then enqueue order. Due scheduled jobs are promoted
-- first. SKIP LOCKED lets any number of workers claim at once without waiting.
CREATE FUNCTION {p}.claim(worker text, queues text[], lim integer, lease float8 DEFAULT 30,
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

-- Complete a claimed job: true when applied, false when the lease token no longer
-- holds it (cancelled, or expired and taken over).
CREATE FUNCTION {p}.complete(job bigint, token text, result text DEFAULT NULL,
                             progress float8 DEFAULT NULL, at float8 DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE
AS $$
    WITH done AS (
        UPDATE {p}.jobs
        SET state = 'completed', result = complete.result,
            finished_at = coalesce(at, {p}.epoch()),
            progress = coalesce(complete.progress, jobs.progress),
            lease_owner = NULL, lease_token = NULL, lease_expires = NULL
        WHERE id = job AND lease_token = token AND state = 'active'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM done)
$$;

-- Fail an attempt. With `final` NULL the job is retried at `retry_at` (default: now)
-- while it has attempts left, else it is dead; true/false force dead/retry.
CREATE FUNCTION {p}.fail(job bigint, token text, error text, traceback text DEFAULT NULL,
                         retry_at float8 DEFAULT NULL, final boolean DEFAULT NULL,
                         worker text DEFAULT NULL, progress float8 DEFAULT NULL,
                         at float8 DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_ float8 := coalesce(at, {p}.epoch());
    failed {p}.jobs;
BEGIN
    UPDATE {p}.jobs
    SET state = CASE WHEN coalesce(final, attempt >= max_attempts) THEN 'dead' ELSE 'scheduled' END,
        run_at = CASE WHEN coalesce(final, attempt >= max_attempts) THEN run_at
                      ELSE coalesce(retry_at, now_) END,
        finished_at = CASE WHEN coalesce(final, attempt >= max_attempts) THEN now_ END,
        error = fail.error,
        attempts = coalesce(attempts, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
            'attempt', attempt, 'error', fail.error, 'traceback', fail.traceback,
            'started_at', started_at, 'finished_at', now_, 'worker', fail.worker)),
        progress = coalesce(fail.progress, jobs.progress),
        lease_owner = NULL, lease_token = NULL, lease_expires = NULL
    WHERE id = job AND lease_token = token AND state = 'active'
    RETURNING * INTO failed;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF failed.state = 'scheduled' THEN
        PERFORM {p}.wake(ARRAY[failed.queue]);  -- a waiting worker recomputes its next due time
    END IF;
    RETURN true;
END
$$;

-- For operators in psql: job counts per queue and state, with the oldest job's age.
CREATE VIEW {p}.queue_stats AS
SELECT queue, state, count(*) AS jobs,
       to_timestamp(min(enqueued_at)) AS oldest_enqueued,
       to_timestamp(max(finished_at)) AS last_finished
FROM {p}.jobs GROUP BY queue, state;

-- Jobs running now, with their worker and how long their lease has left.
CREATE VIEW {p}.active_jobs AS
SELECT id, task, queue, attempt, max_attempts, lease_owner AS worker,
       to_timestamp(started_at) AS started_at,
       make_interval(secs => lease_expires - {p}.epoch()) AS lease_left,
       progress
FROM {p}.jobs WHERE state = 'active';

-- Waiting jobs in the order workers will take them: per queue, ready jobs by priority
-- then age, then scheduled jobs by due time.
CREATE VIEW {p}.pending AS
SELECT queue,
       row_number() OVER (PARTITION BY queue
                          ORDER BY state = 'scheduled', CASE WHEN state = 'scheduled' THEN run_at END,
                                   priority DESC, id) AS position,
       id, task, state, priority, to_timestamp(run_at) AS run_at, attempt,
       (SELECT paused FROM {p}.queues WHERE name = queue) IS TRUE AS queue_paused
FROM {p}.jobs WHERE state IN ('queued', 'scheduled');
