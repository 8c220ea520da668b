-- Schema version 6: complete() and fail() find the job by its primary key whatever the
-- statistics say. With the literal 'active', a generic plan reached the job through the
-- partial index of active jobs and filtered all of them by id (the plan the batch
-- statements in queries.sql avoid the same way); the sub-select cannot be matched to
-- that index's predicate.
CREATE OR REPLACE FUNCTION {p}.complete(job bigint, token text, result text DEFAULT NULL,
                             progress float8 DEFAULT NULL, at float8 DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE
AS $$
    WITH done AS (
        UPDATE {p}.jobs
        SET state = 'completed', result = complete.result,
            finished_at = coalesce(at, {p}.epoch()),
            progress = coalesce(complete.progress, jobs.progress),
            lease_owner = NULL, lease_token = NULL, lease_expires = NULL
        WHERE id = job AND lease_token = token AND state = (SELECT 'active'::text)
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM done)
$$;

CREATE OR REPLACE FUNCTION {p}.fail(job bigint, token text, error text, traceback text DEFAULT NULL,
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
    WHERE id = job AND lease_token = token AND state = (SELECT 'active'::text)
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
