-- Schema version 2: flows. A child knows the job waiting for it (parent_id); a waiting
-- job lists its children in the flow's order and keeps its flow options (JSON text).
ALTER TABLE {p}.jobs ADD COLUMN parent_id bigint,
                     ADD COLUMN children bigint[],
                     ADD COLUMN flow text;

-- Maintenance walks the waiting jobs to settle any a crashed worker left behind.
CREATE INDEX jobs_waiting ON {p}.jobs (id) WHERE state = 'waiting';
