-- forget: take a queue off the prefix's list of queues if it holds no job and is not
-- paused (see forget_if_empty). Purge and delete do that when they remove a queue's last
-- job; this is for queues emptied otherwise: resumed while empty, or emptied by a version
-- before the list was kept this way.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter (unused) and list of
-- queues (single server only)
-- ARGV: queue
-- Returns: nothing.
forget_if_empty(ARGV[1])
