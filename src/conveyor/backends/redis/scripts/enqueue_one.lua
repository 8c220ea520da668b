-- enqueue_one: store one plain job: no unique key, no flow, no per-key limit (enqueue
-- stores those). A single enqueue is the common call, and this skips the batch
-- machinery: 1 job through enqueue cost about 52 us of server time here, this ~38.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter and list of queues
-- (single server only)
-- ARGV: seq (0: take it from KEYS[2]; r: the same, on a resend), now, task, payload,
--       priority, max_attempts, retries, timeout ('' for none), run_at, meta ('{}' for none),
--       queue
-- Returns: the job's seq. Publishes <base>:wake if the queue was empty. A call resent after
--          a dropped connection stores nothing if the lost one ran: it returns that seq.
local seq = ARGV[1]
if seq == 'r' then  -- the lost call may have stored it (see stored_by_lost_call)
  local stored = stored_by_lost_call(ARGV[2], {[identity(ARGV[3], ARGV[4], '')] = 0})
  if stored then return stored end
  seq = '0'
elseif seq ~= '0' and redis.call('EXISTS', jkey(seq)) == 1 then
  return seq  -- the client's seq (Cluster): its client resent a call that ran
end
if seq == '0' then seq = string.format('%d', redis.call('INCRBY', KEYS[2], 1)) end
local state, score, rest = plain(ARGV[2], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
redis.call('HSET', jkey(seq), 'task', ARGV[3], 'state', state, 'payload', ARGV[4], unpack(rest))
redis.call('ZADD', key('all'), seq, seq)
-- A queue with no job has an empty :queued, so listing it only then (and for delayed
-- jobs) keeps the list whole without a call for each job into a busy queue.
if state == 'scheduled' then
  redis.call('ZADD', key('scheduled'), score, seq)
  register(ARGV[11])
elseif redis.call('ZADD', key('queued'), score, pad(seq)) == 1 and redis.call('ZCARD', key('queued')) == 1 then
  register(ARGV[11])
  wake()
end
return seq
