-- Schema version 9: each plain enqueue stores a random id of its call (one for every job
-- of the statement). A call whose connection drops after it was sent may have stored its
-- jobs or not; the client looks for this id among the newest jobs before it sends the
-- call again, so a lost reply is not a second job. No index: the look is rare and walks
-- the primary key from the newest id, and an index would cost every insert.
-- Readable from version 8: a column more, which version 8's statements leave empty.
-- Also the migrations table's `readers_from` (see migrate.py): from this version on,
-- a Conveyor starts on a newer schema whose newer migrations all say it may.
ALTER TABLE {p}.jobs ADD COLUMN enqueue_call text;
ALTER TABLE {p}.migrations ADD COLUMN readers_from integer;
