-- Schema version 6: `unique_for` looks up recently completed jobs by their unique key.
CREATE INDEX {p}_jobs_unique_done ON {p}_jobs (queue, unique_key, finished_at)
    WHERE unique_key IS NOT NULL AND state = 'completed';
