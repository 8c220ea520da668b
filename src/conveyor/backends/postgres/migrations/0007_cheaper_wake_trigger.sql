-- Schema version 7: the insert trigger notifies from one query of its own. It called
-- wake(), a second PL/pgSQL function with a loop of its own; pgbench, one client,
-- Conveyor's one-row insert: 3,710-3,941 commits a second with that trigger against
-- 4,198-4,607 with this one (5,000-5,400 without any), alternating, five times each.
-- What it sends is unchanged: each queue of the statement once, at commit.
CREATE OR REPLACE FUNCTION {p}.notify_inserted() RETURNS trigger LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('{p}.wake', queue) FROM inserted GROUP BY queue;
    RETURN NULL;
END
$$;
