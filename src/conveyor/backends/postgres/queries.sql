-- Every query the PostgreSQL engine runs, by name. `{p}` is the schema and `{columns}`
-- the column list below, in the order the backend's row reader expects. `%(at)s` is
-- the time to use, NULL for the database's clock (tests inject one). Statements that
-- change a claimed job are fenced on (id, lease_token, state = 'active').
--
-- Batch updates compare the state with `(SELECT 'active'::text)`, not the literal: the
-- literal lets the planner scan the partial index of active jobs and test every one
-- against every row of the batch. Statistics taken when few jobs were active make that
-- look cheapest, and it is quadratic: with 1,000,000 finished rows in the table a batch
-- of 7,900 completions against 8,000 active jobs took 23 s. With the sub-select the
-- only way in is the primary key, one lookup per row of the batch.
--
-- Arrays of strings and of ids are sent in binary (`%(name)b`): psycopg quotes each
-- element of a text array in Python, 4.9 ms for 1,000 payloads here against 0.8 ms in
-- binary. Numbers stay text: binary refuses a list mixing ints and floats, and a
-- number costs little to quote.

-- name: columns
id, task, queue, state, payload, priority, attempt, max_attempts, retries, timeout, run_at,
enqueued_at, started_at, finished_at, unique_key, meta, lease_owner, lease_token,
lease_expires, result, error, attempts, progress, parent_id, children, flow, limit_key

-- name: insert
-- Any number of jobs in one statement: one array per column, unnested together. Identity
-- values are taken in insertion order, so the sorted ids are the input order.
INSERT INTO {p}.jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, meta, limit_key, enqueue_call)
SELECT t.task, t.queue, CASE WHEN t.run_at > c.now THEN 'scheduled' ELSE 'queued' END,
       t.payload, t.priority, t.max_attempts, t.retries, t.timeout,
       coalesce(t.run_at, c.now), c.now, t.meta::jsonb, t.limit_key, %(call)s
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c,
     unnest(%(task)b::text[], %(queue)b::text[], %(payload)b::text[], %(priority)s::int[],
            %(max_attempts)s::int[], %(retries)s::int[], %(timeout)s::float8[],
            %(run_at)s::float8[], %(meta)b::text[], %(limit_key)b::text[])
         WITH ORDINALITY AS t(task, queue, payload, priority, max_attempts, retries, timeout,
                              run_at, meta, limit_key, n)
ORDER BY t.n
RETURNING id

-- name: insert_one
-- One job, scalar parameters: 1.7x the rate of the array form for a batch of one.
INSERT INTO {p}.jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, meta, limit_key, enqueue_call)
SELECT %(task)s, %(queue)s,
       CASE WHEN %(run_at)s::float8 > c.now THEN 'scheduled' ELSE 'queued' END,
       %(payload)s, %(priority)s, %(max_attempts)s, %(retries)s, %(timeout)s,
       coalesce(%(run_at)s::float8, c.now), c.now, %(meta)s::jsonb, %(limit_key)s, %(call)s
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c
RETURNING id

-- name: insert_shared
-- Bulk jobs that differ only in their payload: the shared values are bound once.
INSERT INTO {p}.jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, meta, enqueue_call)
SELECT %(task)s, %(queue)s,
       CASE WHEN %(run_at)s::float8 > c.now THEN 'scheduled' ELSE 'queued' END,
       t.payload, %(priority)s, %(max_attempts)s, %(retries)s, %(timeout)s,
       coalesce(%(run_at)s::float8, c.now), c.now, %(meta)s::jsonb, %(call)s
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c,
     unnest(%(payloads)b::text[]) WITH ORDINALITY AS t(payload, n)
ORDER BY t.n
RETURNING id

-- name: call_running
-- Whether the server process of a lost call is still inside a statement or transaction:
-- until it is not, what the call stored is undecided. Gone (a restart) or idle: decided.
SELECT 1 FROM pg_stat_activity
WHERE pid = %(pid)s AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')

-- name: call_running_marked
-- As call_running, behind PgBouncer, where the lost call's server process is not known:
-- a session running a statement under the call's comment (see lostcall.marked).
SELECT 1 FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND query LIKE %(mark)s
  AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')

-- name: stored_by_call
-- The jobs a lost call stored, in the order it sent them, looked for among the newest
-- %(newest)s: the client looks as soon as the server answers again (see migration 9).
SELECT id, queue, unique_key
FROM (SELECT id, queue, unique_key, enqueue_call FROM {p}.jobs ORDER BY id DESC LIMIT %(newest)s) AS recent
WHERE enqueue_call = %(call)s
ORDER BY id

-- name: insert_unique
INSERT INTO {p}.jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, unique_key, meta, limit_key, enqueue_call)
SELECT %(task)s, %(queue)s,
       CASE WHEN %(run_at)s::float8 > c.now THEN 'scheduled' ELSE 'queued' END,
       %(payload)s, %(priority)s, %(max_attempts)s, %(retries)s, %(timeout)s,
       coalesce(%(run_at)s::float8, c.now), c.now, %(unique_key)s, %(meta)s::jsonb, %(limit_key)s,
       %(call)s
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c
ON CONFLICT (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'active', 'waiting')
    DO NOTHING
RETURNING id

-- name: find_unique
SELECT id FROM {p}.jobs
WHERE queue = %(queue)s AND unique_key = %(unique_key)s
  AND state IN ('scheduled', 'queued', 'active', 'waiting')

-- name: link
-- A flow's links and waiting states, set in the enqueue transaction once its ids are known.
UPDATE {p}.jobs AS j
SET parent_id = l.parent_id, children = l.children::bigint[], flow = l.flow,
    state = CASE WHEN l.waiting THEN 'waiting' ELSE j.state END
FROM unnest(%(ids)b::bigint[], %(parents)b::bigint[], %(children)b::text[], %(flows)b::text[],
            %(waiting)s::bool[]) AS l(id, parent_id, children, flow, waiting)
WHERE j.id = l.id

-- name: resume
-- Waiting jobs move on once: to queued (error NULL) or to dead with the error.
UPDATE {p}.jobs AS j
SET state = CASE WHEN r.error IS NULL THEN 'queued' ELSE 'dead' END,
    run_at = CASE WHEN r.error IS NULL THEN c.now ELSE j.run_at END,
    finished_at = CASE WHEN r.error IS NULL THEN NULL ELSE c.now END,
    error = coalesce(r.error, j.error)
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c,
     (SELECT DISTINCT ON (id) id, error
      FROM unnest(%(ids)b::bigint[], %(errors)b::text[]) AS u(id, error)) AS r
WHERE j.id = r.id AND j.state = 'waiting'
RETURNING j.id, j.queue, j.state

-- name: find_recent
-- `unique_for`: the newest job with the key that completed within the window.
SELECT id FROM {p}.jobs
WHERE queue = %(queue)s AND unique_key = %(unique_key)s AND state = 'completed'
  AND finished_at > coalesce(%(at)s::float8, {p}.epoch()) - %(unique_for)s
ORDER BY finished_at DESC LIMIT 1

-- name: debounce
-- A later enqueue with the key replaces the arguments and time of a job not yet started.
UPDATE {p}.jobs AS j
SET payload = %(payload)s, run_at = coalesce(%(run_at)s::float8, c.now),
    state = CASE WHEN %(run_at)s::float8 > c.now THEN 'scheduled' ELSE 'queued' END
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c
WHERE j.id = %(id)s AND j.state IN ('scheduled', 'queued')

-- name: limited_begin
-- A limited claim of one queue: serialise with the others on it, promote its due jobs,
-- and say whether it is paused and what time it is.
SELECT pg_advisory_xact_lock(hashtextextended('conveyor.limits.{p}.' || %(queue)s, 0)),
       EXISTS (SELECT 1 FROM {p}.queues WHERE name = %(queue)s AND paused),
       coalesce(%(at)s::float8, {p}.epoch())

-- name: promote_queue
UPDATE {p}.jobs SET state = 'queued'
WHERE state = 'scheduled' AND queue = %(queue)s AND run_at <= %(now)s

-- name: ready_scan
-- The pause is looked at again here: limited_begin's look is an earlier statement, and a
-- pause plus an enqueue committed in between must not start the new job (see migration 8).
SELECT id, task, limit_key FROM {p}.jobs
WHERE state = 'queued' AND queue = %(queue)s
  AND NOT EXISTS (SELECT 1 FROM {p}.queues WHERE name = %(queue)s AND paused)
ORDER BY priority DESC, id
LIMIT %(scan)s FOR UPDATE SKIP LOCKED

-- name: active_of
SELECT task, limit_key FROM {p}.jobs WHERE state = 'active' AND queue = %(queue)s

-- name: recent_starts
SELECT s.scope, (SELECT count(*) FROM {p}.starts AS t
                 WHERE t.queue = %(queue)s AND t.scope = s.scope AND t.at > s.since)
FROM unnest(%(scopes)b::text[], %(since)s::float8[]) AS s(scope, since)

-- name: log_starts
INSERT INTO {p}.starts (queue, scope, at)
SELECT %(queue)s, scope, %(now)s FROM unnest(%(scopes)b::text[]) AS scope

-- name: trim_starts
DELETE FROM {p}.starts WHERE queue = %(queue)s AND at <= %(before)s

-- name: claim_ids
UPDATE {p}.jobs
SET state = 'active', attempt = attempt + 1, started_at = %(now)s,
    lease_owner = %(worker)s, lease_token = %(token)s, lease_expires = %(now)s + %(lease)s
WHERE id = ANY(%(ids)b::bigint[]) AND state = 'queued'
RETURNING {columns}

-- name: claim_tick
-- Compare-and-set: a row comes back only for a tick later than the last one stored. A
-- racing scheduler waits on the row lock, then sees the new tick and gets nothing.
INSERT INTO {p}.schedules (name, last_tick) VALUES (%(name)s, %(tick)s)
ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick
WHERE schedules.last_tick < excluded.last_tick
RETURNING name

-- name: claim
SELECT {columns} FROM {p}.claim(%(worker)s, %(queues)s, %(limit)s, %(lease)s, %(at)s)

-- name: extend_leases
UPDATE {p}.jobs AS j
SET lease_expires = c.now + %(lease)s, progress = coalesce(r.progress, j.progress)
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c,
     unnest(%(ids)b::bigint[], %(tokens)b::text[], %(progress)s::float8[]) AS r(id, token, progress)
WHERE j.id = r.id AND j.lease_token = r.token AND j.state = (SELECT 'active'::text)
RETURNING j.id, r.token

-- name: insert_logs
INSERT INTO {p}.logs (job_id, at, message, fields)
SELECT * FROM unnest(%(ids)b::bigint[], %(at)s::float8[], %(messages)b::text[], %(fields)b::jsonb[])

-- name: complete_batch
UPDATE {p}.jobs AS j
SET state = 'completed', result = r.result, finished_at = c.now,
    progress = coalesce(r.progress, j.progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
FROM (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now) AS c,
     unnest(%(ids)b::bigint[], %(tokens)b::text[], %(results)b::text[], %(progress)s::float8[])
         AS r(id, token, result, progress)
WHERE j.id = r.id AND j.lease_token = r.token AND j.state = (SELECT 'active'::text)
RETURNING j.id, r.token

-- name: fail_batch
-- Failed attempts, one `fail()` call per row, all in one statement: a burst of failing
-- jobs costs one round trip per batch, like completions.
SELECT r.id, r.token
FROM unnest(%(ids)b::bigint[], %(tokens)b::text[], %(errors)b::text[], %(tracebacks)b::text[],
            %(retry_at)s::float8[], %(final)s::boolean[], %(workers)b::text[],
            %(progress)s::float8[])
         AS r(id, token, error, traceback, retry_at, final, worker, progress)
WHERE {p}.fail(r.id, r.token, r.error, r.traceback, r.retry_at, r.final, r.worker, r.progress,
               %(at)s)

-- name: release_batch
-- Shutdown hands jobs back untouched: the attempt they had started is not counted. A
-- snooze (run_at given) waits without spending the attempt or adding to the history.
WITH back AS (
    UPDATE {p}.jobs AS j
    SET state = CASE WHEN r.run_at IS NULL THEN 'queued' ELSE 'scheduled' END,
        attempt = j.attempt - 1, run_at = coalesce(r.run_at, j.run_at),
        progress = coalesce(r.progress, j.progress),
        lease_owner = NULL, lease_token = NULL, lease_expires = NULL
    FROM unnest(%(ids)b::bigint[], %(tokens)b::text[], %(run_at)s::float8[], %(progress)s::float8[])
             AS r(id, token, run_at, progress)
    WHERE j.id = r.id AND j.lease_token = r.token AND j.state = (SELECT 'active'::text)
    RETURNING j.id, r.token, j.queue
)
SELECT id, token, {p}.wake(ARRAY[queue]) FROM back

-- name: expire
-- Leases that ran out: requeue the job, or kill it when out of attempts. SKIP LOCKED:
-- workers recovering at the same moment split the work instead of queueing on it.
WITH c AS (SELECT coalesce(%(at)s::float8, {p}.epoch()) AS now),
expired AS MATERIALIZED (
    SELECT id FROM {p}.jobs, c
    WHERE state = 'active' AND lease_expires < c.now
    FOR UPDATE OF jobs SKIP LOCKED
),
recovered AS (
    UPDATE {p}.jobs AS j
    SET state = CASE WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'dead' END,
        finished_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE c.now END,
        error = %(error)s,
        attempts = coalesce(j.attempts, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'error', %(error)s::text, 'traceback', NULL,
            'started_at', j.started_at, 'finished_at', c.now, 'worker', j.lease_owner)),
        lease_owner = NULL, lease_token = NULL, lease_expires = NULL
    FROM expired, c
    WHERE j.id = expired.id
    RETURNING j.id, j.queue, j.state
)
SELECT id, CASE WHEN state = 'queued' THEN {p}.wake(ARRAY[queue]) END
FROM recovered ORDER BY state = 'dead', id

-- name: look
-- For a waiting worker: is a job ready on an unpaused queue, and in how many seconds
-- does the next scheduled one fall due? One probe of each queue's index, in the index's
-- own order: with a few queues the statistics say any queue holds half the jobs, and
-- `EXISTS (... queue IN (live))` was planned as a scan of every queued job, meant to
-- stop at the first match; an idle queue's worker read them all (76 ms a look with
-- 92,000 queued elsewhere, which put its p50 latency at 12 ms instead of 1.5).
WITH live AS (
    SELECT q FROM unnest(%(queues)b::text[]) AS q
    WHERE NOT EXISTS (SELECT 1 FROM {p}.queues WHERE name = q AND paused)
)
SELECT EXISTS (SELECT 1 FROM live, LATERAL (
           SELECT 1 FROM {p}.jobs WHERE state = 'queued' AND queue = live.q
           ORDER BY priority DESC, id LIMIT 1) AS ready),
       (SELECT min(due.run_at) FROM live, LATERAL (
           SELECT run_at FROM {p}.jobs WHERE state = 'scheduled' AND queue = live.q
           ORDER BY run_at LIMIT 1) AS due)
           - coalesce(%(at)s::float8, {p}.epoch())

-- name: get
SELECT {columns} FROM {p}.jobs WHERE id = ANY(%(ids)b::bigint[])

-- name: list
SELECT {columns} FROM {p}.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
ORDER BY id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: counts
SELECT queue, state, count(*) FROM {p}.jobs GROUP BY queue, state

-- name: logs
SELECT at, message, fields FROM {p}.logs WHERE job_id = %(id)s ORDER BY seq

-- name: cancel
UPDATE {p}.jobs
SET state = 'cancelled', finished_at = coalesce(%(at)s::float8, {p}.epoch()),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = ANY(%(ids)b::bigint[]) AND state IN ('scheduled', 'queued', 'active', 'waiting')
RETURNING id

-- name: retry
-- A fresh budget: the task's configured retries again, on top of the attempts spent.
UPDATE {p}.jobs
SET state = 'queued', run_at = coalesce(%(at)s::float8, {p}.epoch()), finished_at = NULL,
    max_attempts = attempt + retries + 1
WHERE id = %(id)s AND state IN ('dead', 'cancelled')
RETURNING queue

-- name: wake
SELECT {p}.wake(%(queues)b::text[])

-- name: paused
SELECT name FROM {p}.queues WHERE paused ORDER BY name

-- name: set_paused
INSERT INTO {p}.queues (name, paused, paused_at)
SELECT q, %(paused)s, coalesce(%(at)s::float8, {p}.epoch()) FROM unnest(%(queues)b::text[]) AS q
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at

-- name: purge
-- LIMIT NULL is no limit. Batches keep each transaction's row locks few.
DELETE FROM {p}.jobs
WHERE id IN (
    SELECT id FROM {p}.jobs
    WHERE state = %(state)s
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(older_than)s::float8 IS NULL OR finished_at < %(older_than)s)
    ORDER BY finished_at, id
    LIMIT %(limit)s
)
RETURNING id

-- name: delete
DELETE FROM {p}.jobs WHERE id = ANY(%(ids)b::bigint[]) RETURNING id

-- name: delete_logs
DELETE FROM {p}.logs WHERE job_id = ANY(%(ids)b::bigint[])

-- name: report_worker
INSERT INTO {p}.workers (id, host, pid, queues, concurrency, started_at, last_seen, active,
                         processed)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s, %(started_at)s,
        coalesce(%(at)s::float8, {p}.epoch()), %(active)s, %(processed)s)
ON CONFLICT (id) DO UPDATE SET
    last_seen = excluded.last_seen, active = excluded.active, processed = excluded.processed

-- name: remove_worker
DELETE FROM {p}.workers WHERE id = %(id)s

-- name: forget_workers
DELETE FROM {p}.workers WHERE last_seen < coalesce(%(at)s::float8, {p}.epoch()) - 3600

-- name: workers
SELECT id, host, pid, queues, concurrency, started_at, last_seen, active, processed
FROM {p}.workers WHERE last_seen >= coalesce(%(at)s::float8, {p}.epoch()) - %(seen)s
ORDER BY last_seen DESC

-- name: publish
-- One statement: the batch, the trim to the newest :keep batches, and the readers' wake-up.
WITH added AS (
    INSERT INTO {p}.events (events) VALUES (%(events)s) RETURNING seq
), trimmed AS (
    DELETE FROM {p}.events WHERE seq <= (SELECT seq FROM added) - %(keep)s
)
SELECT pg_notify('{p}.wake', ' events')

-- name: event_cursor
SELECT coalesce(max(seq), 0) FROM {p}.events

-- name: read_events
SELECT seq, events FROM {p}.events WHERE seq > %(after)s ORDER BY seq LIMIT 50

-- name: notify_done
-- Jobs ended: result() waiters look again (one notification per batch, not per job).
SELECT pg_notify('{p}.wake', ' done')

-- name: dead_rows
-- The jobs and events tables' dead rows, for the workers' VACUUM (see vacuum.py).
SELECT pg_stat_get_dead_tuples('{p}.jobs'::regclass), pg_stat_get_dead_tuples('{p}.events'::regclass)
