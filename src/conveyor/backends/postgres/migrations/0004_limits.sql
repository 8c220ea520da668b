-- Schema version 4: rate and concurrency limits. A job keeps the value its task's
-- per-key limit counts by; `starts` logs job starts per limited scope for the sliding
-- rate windows (trimmed as claims go). Limited claims of one queue take a transaction
-- advisory lock, so their counts and leases are one step.
ALTER TABLE {p}.jobs ADD COLUMN limit_key text;

CREATE TABLE {p}.starts (
    queue text   NOT NULL,
    scope text   NOT NULL,
    at    float8 NOT NULL
);
CREATE INDEX starts_scope ON {p}.starts (queue, scope, at);
