-- enqueue_many: store one job per payload, every other field shared (bulk enqueue).
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter and list of queues
-- (single server only)
-- ARGV: queue, now, first seq (0: take from KEYS[2]; r: the same, on a resend), task,
--       priority, max_attempts, retries, timeout, run_at, meta, then the payloads
-- Returns: the first seq; the jobs took consecutive seqs from it. A call resent after a
--          dropped connection stores nothing if the lost one ran: it returns that first seq.
-- Publishes <base>:wake if the queue was empty.
local task = ARGV[4]
local count = #ARGV - 10
if ARGV[3] == 'r' then
  -- Its last job is the lost call's newest with that payload, should a payload repeat.
  local stored = stored_by_lost_call(ARGV[2], {[identity(task, ARGV[#ARGV], '')] = count - 1})
  if stored then return tonumber(stored) - (count - 1) end
elseif ARGV[3] ~= '0' and redis.call('EXISTS', jkey(ARGV[3])) == 1 then
  return tonumber(ARGV[3])  -- the client's seqs (Cluster): its client resent a call that ran
end
local first = sequence(ARGV[3], count)
local was_empty = redis.call('ZCARD', key('queued')) == 0
register(ARGV[1])
-- Every job shares all but its payload, so the per-job work is one HSET and two sorted-set
-- entries, written here directly rather than through insert() (unique keys, flows and
-- debounce do not apply): insert()'s checks were a third of the server's time per job.
local state, score, rest = plain(ARGV[2], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
local jobs = base .. ':j:'
local ready, all = {}, {}
for i = 0, count - 1 do
  local n = first + i
  local seq = string.format('%d', n)
  redis.call('HSET', jobs .. seq, 'task', task, 'state', state, 'payload', ARGV[11 + i], unpack(rest))
  ready[2 * i + 1], all[2 * i + 1], all[2 * i + 2] = score, seq, seq
  ready[2 * i + 2] = state == 'queued' and string.format('%016d', n) or seq
end
zadd(state, ready)
zadd('all', all)
if was_empty and state == 'queued' and count > 0 then wake() end
return first
