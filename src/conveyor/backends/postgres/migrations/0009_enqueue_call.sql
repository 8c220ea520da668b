-- Schema version 9: each plain enqueue stores a random id of its call (one for every job
-- of the statement). A call whose connection drops after it was sent may have stored its
-- jobs or not; the client looks for this id among the newest jobs before it sends the
-- call again, so a lost reply is not a second job. No index: the look is rare and walks
-- the primary key from the newest id, and an index would cost every insert.
ALTER TABLE {p}.jobs ADD COLUMN enqueue_call text;
