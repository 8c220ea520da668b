-- Every query the SQLite engine runs, by name. `{p}` is the table prefix and
-- `{columns}` the column list below, in the order the backend's row reader expects.
-- Statements that change a claimed job are fenced on (id, lease_token, state = 'active').

-- name: columns
id, task, queue, state, payload, priority, attempt, max_attempts, retries, timeout, run_at,
enqueued_at, started_at, finished_at, unique_key, meta, lease_owner, lease_token,
lease_expires, result, error, attempts, progress, parent_id, children, flow, limit_key

-- name: insert
-- The backend appends one "(?, ...)" group per row: one statement for up to 80 rows is
-- about twice as fast as executemany, which steps the VM once per row.
INSERT INTO {p}_jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, unique_key, meta, limit_key)
VALUES

-- name: insert_shared
-- Bulk jobs that differ only in their payload: the shared columns are bound once and the
-- payloads arrive as one JSON array, so SQLite binds 12 values per batch, not 13 per row
-- (binding was half the cost of a multi-row INSERT: 8.3 -> about 4 us a row).
INSERT INTO {p}_jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, unique_key, meta, limit_key)
SELECT :task, :queue, :state, value, :priority, :max_attempts, :retries, :timeout,
       :run_at, :enqueued_at, NULL, :meta, :limit_key
FROM json_each(:payloads)
ORDER BY key

-- name: claim_tick
-- Compare-and-set: changes a row only for a tick later than the last one stored.
INSERT INTO {p}_schedules (name, last_tick) VALUES (:name, :tick)
ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick
WHERE {p}_schedules.last_tick < excluded.last_tick

-- name: insert_unique
INSERT INTO {p}_jobs (task, queue, state, payload, priority, max_attempts, retries, timeout,
                      run_at, enqueued_at, unique_key, meta, limit_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING id

-- name: find_unique
SELECT id FROM {p}_jobs
WHERE queue = ? AND unique_key = ? AND state IN ('scheduled', 'queued', 'active', 'waiting')

-- name: link
-- A flow's links, set in the enqueue transaction once the batch's ids are known.
UPDATE {p}_jobs SET parent_id = ?, children = ?, flow = ? WHERE id = ?

-- name: resume
UPDATE {p}_jobs SET state = 'queued', run_at = :now WHERE id = :id AND state = 'waiting'

-- name: resume_dead
UPDATE {p}_jobs SET state = 'dead', finished_at = :now, error = :error
WHERE id = :id AND state = 'waiting'

-- name: find_recent
-- `unique_for`: the newest job with the key that completed after :since.
SELECT id FROM {p}_jobs
WHERE queue = :queue AND unique_key = :key AND state = 'completed' AND finished_at > :since
ORDER BY finished_at DESC LIMIT 1

-- name: debounce
-- A later enqueue with the key replaces the arguments and time of a job not yet started.
UPDATE {p}_jobs
SET payload = :payload, run_at = :run_at,
    state = CASE WHEN :run_at > :now THEN 'scheduled' ELSE 'queued' END
WHERE id = :id AND state IN ('scheduled', 'queued')

-- name: ready_scan
-- A limited claim's candidates, in run order.
SELECT id, task, limit_key FROM {p}_jobs
WHERE state = 'queued' AND queue = :queue
ORDER BY priority DESC, id
LIMIT :scan

-- name: active_of
SELECT task, limit_key FROM {p}_jobs WHERE state = 'active' AND queue = :queue

-- name: recent_starts
SELECT count(*) FROM {p}_starts WHERE queue = :queue AND scope = :scope AND at > :since

-- name: log_start
INSERT INTO {p}_starts (queue, scope, at) VALUES (?, ?, ?)

-- name: trim_starts
DELETE FROM {p}_starts WHERE queue = :queue AND at <= :before

-- name: claim_ids
UPDATE {p}_jobs
SET state = 'active', attempt = attempt + 1, started_at = :now,
    lease_owner = :worker, lease_token = :token, lease_expires = :expires
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'queued'
RETURNING {columns}

-- name: promote_due
UPDATE {p}_jobs SET state = 'queued'
WHERE state = 'scheduled' AND queue = :queue AND run_at <= :now

-- name: claim
UPDATE {p}_jobs
SET state = 'active', attempt = attempt + 1, started_at = :now,
    lease_owner = :worker, lease_token = :token, lease_expires = :expires
WHERE id IN (
    SELECT id FROM {p}_jobs
    WHERE state = 'queued' AND queue = :queue
    ORDER BY priority DESC, id
    LIMIT :limit
)
RETURNING {columns}

-- name: paused
SELECT name FROM {p}_queues WHERE paused = 1 ORDER BY name

-- name: set_paused
INSERT INTO {p}_queues (name, paused, paused_at) VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at

-- name: next_due
SELECT min(run_at) FROM {p}_jobs WHERE state = 'scheduled' AND queue = ?

-- name: extend_lease
UPDATE {p}_jobs SET lease_expires = :expires, progress = coalesce(:progress, progress)
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: complete
UPDATE {p}_jobs
SET state = 'completed', result = :result, finished_at = :now,
    progress = coalesce(:progress, progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: complete_batch
-- Many completions in one statement: :batch is a JSON array of [id, token, result, progress]
-- with each result as a JSON string, so json_extract returns its exact text. Binding one
-- array instead of five named values per row halves the cost of storing results.
UPDATE {p}_jobs
SET state = 'completed', result = batch.result, finished_at = :now,
    progress = coalesce(batch.progress, {p}_jobs.progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
FROM (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS token,
           json_extract(value, '$[2]') AS result, json_extract(value, '$[3]') AS progress
    FROM json_each(:batch)
) AS batch
WHERE {p}_jobs.id = batch.id AND {p}_jobs.lease_token = batch.token AND {p}_jobs.state = 'active'

-- name: fail_retry
UPDATE {p}_jobs
SET state = 'scheduled', run_at = :run_at, error = :error,
    attempts = json_insert(coalesce(attempts, '[]'), '$[#]',
        json_set(:history, '$.attempt', attempt, '$.started_at', started_at)),
    progress = coalesce(:progress, progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: fail_final
UPDATE {p}_jobs
SET state = 'dead', finished_at = :now, error = :error,
    attempts = json_insert(coalesce(attempts, '[]'), '$[#]',
        json_set(:history, '$.attempt', attempt, '$.started_at', started_at)),
    progress = coalesce(:progress, progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: release
-- Shutdown hands the job back untouched: the attempt it had started is not counted.
UPDATE {p}_jobs
SET state = 'queued', attempt = attempt - 1,
    progress = coalesce(:progress, progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: snooze
-- Later, without spending the attempt and without an entry in the error history.
UPDATE {p}_jobs
SET state = 'scheduled', attempt = attempt - 1, run_at = :run_at,
    progress = coalesce(:progress, progress),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND lease_token = :token AND state = 'active'

-- name: insert_log
INSERT INTO {p}_logs (job_id, at, message, fields) VALUES (?, ?, ?, ?)

-- name: expire_requeue
UPDATE {p}_jobs
SET state = 'queued', error = :error,
    attempts = json_insert(coalesce(attempts, '[]'), '$[#]', json_object(
        'attempt', attempt, 'error', :error, 'traceback', NULL,
        'started_at', started_at, 'finished_at', :now, 'worker', lease_owner)),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE state = 'active' AND lease_expires < :now AND attempt < max_attempts
RETURNING id

-- name: expire_kill
UPDATE {p}_jobs
SET state = 'dead', finished_at = :now, error = :error,
    attempts = json_insert(coalesce(attempts, '[]'), '$[#]', json_object(
        'attempt', attempt, 'error', :error, 'traceback', NULL,
        'started_at', started_at, 'finished_at', :now, 'worker', lease_owner)),
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE state = 'active' AND lease_expires < :now
RETURNING id

-- name: get
-- :ids is a JSON array of ids: one statement for any number of jobs.
SELECT {columns} FROM {p}_jobs WHERE id IN (SELECT value FROM json_each(:ids))

-- name: list
SELECT {columns} FROM {p}_jobs
WHERE (:queue IS NULL OR queue = :queue)
  AND (:state IS NULL OR state = :state)
  AND (:task IS NULL OR task = :task)
ORDER BY id DESC
LIMIT :limit OFFSET :offset

-- name: counts
SELECT queue, state, count(*) FROM {p}_jobs GROUP BY queue, state

-- name: logs
SELECT at, message, fields FROM {p}_logs WHERE job_id = ? ORDER BY rowid

-- name: cancel
UPDATE {p}_jobs
SET state = 'cancelled', finished_at = :now,
    lease_owner = NULL, lease_token = NULL, lease_expires = NULL
WHERE id = :id AND state IN ('scheduled', 'queued', 'active', 'waiting')

-- name: retry
-- A fresh budget: the task's configured retries again, on top of the attempts spent.
UPDATE {p}_jobs
SET state = 'queued', run_at = :now, finished_at = NULL,
    max_attempts = attempt + retries + 1
WHERE id = :id AND state IN ('dead', 'cancelled')

-- name: purge
-- :limit -1 means no limit.
DELETE FROM {p}_jobs
WHERE id IN (
    SELECT id FROM {p}_jobs
    WHERE state = :state
      AND (:queue IS NULL OR queue = :queue)
      AND (:older_than IS NULL OR finished_at < :older_than)
    ORDER BY finished_at, id
    LIMIT :limit
)
RETURNING id

-- name: delete
DELETE FROM {p}_jobs WHERE id = ? RETURNING id

-- name: delete_logs
DELETE FROM {p}_logs WHERE job_id = ?

-- name: report_worker
INSERT INTO {p}_workers (id, host, pid, queues, concurrency, started_at, last_seen, active,
                         processed)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    last_seen = excluded.last_seen, active = excluded.active, processed = excluded.processed

-- name: remove_worker
DELETE FROM {p}_workers WHERE id = ?

-- name: forget_workers
DELETE FROM {p}_workers WHERE last_seen < ?

-- name: workers
SELECT id, host, pid, queues, concurrency, started_at, last_seen, active, processed
FROM {p}_workers WHERE last_seen >= ? ORDER BY last_seen DESC

-- name: insert_event
INSERT INTO {p}_events (events) VALUES (?)

-- name: trim_events
DELETE FROM {p}_events WHERE seq <= last_insert_rowid() - :keep

-- name: event_cursor
SELECT coalesce(max(seq), 0) FROM {p}_events

-- name: read_events
SELECT seq, events FROM {p}_events WHERE seq > :after ORDER BY seq LIMIT 50
