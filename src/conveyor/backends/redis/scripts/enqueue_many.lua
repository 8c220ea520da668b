-- enqueue_many: store one job per payload, every other field shared (bulk enqueue).
-- KEYS[1] queue base; KEYS[2] the prefix's sequence counter (single server only)
-- ARGV: queue, now, first seq (0: take from KEYS[2]), task, priority, max_attempts,
--       retries, timeout, run_at, meta, then the payloads
-- Returns: the first seq; the jobs took consecutive seqs from it.
-- Publishes <base>:wake if the queue was empty.
local queue, now, task = ARGV[1], ARGV[2], ARGV[4]
local priority, max_attempts, retries, timeout = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local run_at, meta = ARGV[9], ARGV[10]
local count = #ARGV - 10
local first = sequence(ARGV[3], count)
local was_empty = redis.call('ZCARD', key('queued')) == 0
local pending = batch()
for i = 0, count - 1 do
  insert(pending, string.format('%d', first + i), now, task, ARGV[11 + i], priority, max_attempts,
    retries, timeout, run_at, '', meta)
end
flush(pending)
-- Jobs queued by this batch need no second ZCARD (one redis.call is ~5 us of ~30);
-- a debounce may have moved an earlier job into :queued, so look when none were.
if was_empty and (#pending.queued > 0 or redis.call('ZCARD', key('queued')) > 0) then wake() end
return first
