-- enqueue: store a batch of jobs for one queue, in order.
-- KEYS[1] queue base; KEYS[2] the prefix's sequence counter (single server only)
-- ARGV: queue, now, first seq (0: take them from KEYS[2]), then per job 11 values:
--       offset (the job's seq is first + offset), task, payload, priority, max_attempts,
--       retries, timeout, run_at, unique_key, meta, extras ('' for none; see insert)
-- Returns: per job {seq, created}: created 0 when a live job held the unique key
--          (seq is then that job's). Publishes <base>:wake if the queue was empty.
local queue, now = ARGV[1], ARGV[2]
local count = (#ARGV - 3) / 11
local first = sequence(ARGV[3], count)
local was_empty = redis.call('ZCARD', key('queued')) == 0
local pending = batch()
local out = {}
for i = 0, count - 1 do
  local a = 4 + i * 11
  local id, created = insert(pending, string.format('%d', first + tonumber(ARGV[a])), now, ARGV[a + 1],
    ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10])
  out[i + 1] = {id, created}
end
flush(pending)
-- Jobs queued by this batch need no second ZCARD (one redis.call is ~5 us of ~30);
-- a debounce may have moved an earlier job into :queued, so look when none were.
if was_empty and (#pending.queued > 0 or redis.call('ZCARD', key('queued')) > 0) then wake() end
return out
