-- Schema version 3: `unique_for` looks up recently completed jobs by their unique key.
CREATE INDEX jobs_unique_done ON {p}.jobs (queue, unique_key, finished_at)
    WHERE unique_key IS NOT NULL AND state = 'completed';
