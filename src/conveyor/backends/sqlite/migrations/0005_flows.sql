-- Schema version 5: flows. A child knows the job waiting for it (parent_id); a waiting
-- job lists its children (JSON array of ids, in the flow's order) and its flow options.
ALTER TABLE {p}_jobs ADD COLUMN parent_id INTEGER;
ALTER TABLE {p}_jobs ADD COLUMN children TEXT;
ALTER TABLE {p}_jobs ADD COLUMN flow TEXT;
