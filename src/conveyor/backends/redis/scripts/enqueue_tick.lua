-- enqueue_tick: store a schedule's job for one tick, unless that tick (or a later one)
-- already has its job. Many schedulers may race; the compare-and-set on :ticks lets one win.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter and list of queues
-- (single server only)
-- ARGV: queue, now, first seq (0: take from KEYS[2]), schedule, tick, then the 9 job
--       values as in enqueue, then call (an id per call, see keep)
-- Returns: the new job's seq, or false when the tick was taken (or a unique key matched).
--          A resend of a call that ran answers what it did: the tick is taken by then.
local queue, now, schedule, tick, call = ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[15]
local answered = kept(call)
if answered then return answered[1] or false end
local last = redis.call('HGET', key('ticks'), schedule)
if last and tonumber(last) >= tonumber(tick) then return false end
redis.call('HSET', key('ticks'), schedule, tick)
local seq = sequence(ARGV[3], 1)
local was_empty = redis.call('ZCARD', key('queued')) == 0
register(queue)
local pending = batch()
local id, created = insert(pending, string.format('%d', seq), now, ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14])
flush(pending)
-- Jobs queued by this batch need no second ZCARD (one redis.call is ~5 us of ~30);
-- a debounce may have moved an earlier job into :queued, so look when none were.
if was_empty and (#pending.queued > 0 or redis.call('ZCARD', key('queued')) > 0) then wake() end
if created == 0 then
  keep(call, {})  -- a resend answers false too
  return false
end
return keep(call, {id})[1]
