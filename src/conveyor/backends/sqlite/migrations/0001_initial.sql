-- Conveyor on SQLite, schema version 1. `{p}` is the prefix; `-- ` lines are comments.
-- Job ids come from AUTOINCREMENT: never reused after a purge, and consecutive within one
-- write transaction, so a multi-row insert knows its ids without RETURNING.
CREATE TABLE {p}_jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    task          TEXT    NOT NULL,
    queue         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    attempt       INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 1,
    retries       INTEGER NOT NULL DEFAULT 0,
    timeout       REAL,
    run_at        REAL    NOT NULL,
    enqueued_at   REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    unique_key    TEXT,
    meta          TEXT,
    lease_owner   TEXT,
    lease_token   TEXT,
    lease_expires REAL,
    result        TEXT,
    error         TEXT,
    attempts      TEXT,
    progress      REAL
);

-- Partial indexes cover only live states, so finished jobs cost the hot paths nothing.
-- Ready jobs in claim order: SQLite appends the rowid (= id) to every index key.
CREATE INDEX {p}_jobs_ready ON {p}_jobs (queue, priority DESC) WHERE state = 'queued';
CREATE INDEX {p}_jobs_due ON {p}_jobs (queue, run_at) WHERE state = 'scheduled';
CREATE INDEX {p}_jobs_leases ON {p}_jobs (lease_expires) WHERE state = 'active';
CREATE UNIQUE INDEX {p}_jobs_unique ON {p}_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'active', 'waiting');
CREATE INDEX {p}_jobs_finished ON {p}_jobs (finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');

CREATE TABLE {p}_logs (
    job_id  INTEGER NOT NULL,
    at      REAL    NOT NULL,
    message TEXT    NOT NULL,
    fields  TEXT
);
CREATE INDEX {p}_logs_job ON {p}_logs (job_id);

CREATE TABLE {p}_workers (
    id          TEXT PRIMARY KEY,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    queues      TEXT    NOT NULL,
    concurrency INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    last_seen   REAL    NOT NULL,
    active      INTEGER NOT NULL,
    processed   INTEGER NOT NULL
);
