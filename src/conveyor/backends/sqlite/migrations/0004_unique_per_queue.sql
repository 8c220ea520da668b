-- Schema version 4: a unique key is scoped to its queue, as on every engine (Redis keeps
-- each queue in one Cluster slot, so it can only check keys there).
DROP INDEX {p}_jobs_unique;
CREATE UNIQUE INDEX {p}_jobs_unique ON {p}_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'active', 'waiting');
