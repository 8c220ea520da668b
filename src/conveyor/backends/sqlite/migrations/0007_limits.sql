-- Schema version 7: rate and concurrency limits. A job keeps the value its task's
-- per-key limit counts by; `starts` logs job starts per limited scope for the sliding
-- rate windows (trimmed as claims go).
ALTER TABLE {p}_jobs ADD COLUMN limit_key TEXT;
CREATE TABLE {p}_starts (
    queue TEXT NOT NULL,
    scope TEXT NOT NULL,
    at    REAL NOT NULL
);
CREATE INDEX {p}_starts_scope ON {p}_starts (queue, scope, at);
