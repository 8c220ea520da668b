-- finish: persist attempt outcomes and release their leases, fenced by the lease token.
-- KEYS[1] queue base
-- ARGV: now, call (the batch's id: the same outcomes give the same id), then per outcome
--       11 values + n log lines: seq, token, kind, result, error, traceback, retry_at,
--       worker, progress, n, n log lines ('' for none)
--       kind: completed | retry | dead | released | snoozed
-- Returns: per outcome 1 (stored) or 0 (lease lost: the job is no longer ours). A call
--          whose id ran in the last minute changes nothing and returns that call's answer:
--          it is a resend whose first reply was lost (after a dropped connection, by the
--          lane, by Cluster's client, or by the worker after an error), and run again its
--          stored jobs would answer 0, as if their leases were lost.
local now = ARGV[1]
local answered = kept(ARGV[2])
if answered then return answered end
local out = {}
local requeued = false
local completed = {}  -- the common case, batched: {now, seq, now, seq, ...}
local a = 3
while a <= #ARGV do
  local seq, token, kind = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local n = tonumber(ARGV[a + 9])
  local job = jkey(seq)
  local held = redis.call('HMGET', job, 'state', 'lease_token', 'unique_key', 'watched')
  if held[1] == 'active' and held[2] == token then
    note(seq, ARGV[a + 8], n, a + 10)
    if kind == 'completed' then
      -- Two calls a job here; the zset moves happen once for the whole batch below.
      redis.call('HSET', job, 'state', 'completed', 'result', ARGV[a + 3], 'finished_at', now,
        'lease_owner', '', 'lease_token', '', 'lease_expires', '')
      push(completed, now, seq)
    elseif kind == 'released' then
      clear_lease(seq)
      redis.call('HINCRBY', job, 'attempt', -1)
      move(seq, 'active', 'queued', queued_score(seq))
      requeued = true
    elseif kind == 'snoozed' then
      local at = ARGV[a + 6]
      if at == '' then at = now end
      clear_lease(seq)
      redis.call('HINCRBY', job, 'attempt', -1)
      redis.call('HSET', job, 'run_at', at)
      move(seq, 'active', 'scheduled', at)
    else
      clear_lease(seq)
      add_attempt(seq, ARGV[a + 4], ARGV[a + 5], now, ARGV[a + 7])
      if kind == 'retry' then
        local at = ARGV[a + 6]
        if at == '' then at = now end
        redis.call('HSET', job, 'run_at', at)
        move(seq, 'active', 'scheduled', at)
      else
        redis.call('HSET', job, 'finished_at', now)
        move(seq, 'active', 'dead', now)
      end
    end
    if kind == 'completed' or kind == 'dead' then
      if held[3] then release_unique(seq, held[3], kind == 'completed') end
      finished(seq, held[4] ~= false)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 10 + n
end
if #completed > 0 then
  local seqs = {}
  for i = 2, #completed, 2 do seqs[#seqs + 1] = completed[i] end
  for i = 1, #seqs, 1000 do
    redis.call('ZREM', key('active'), unpack(seqs, i, math.min(i + 999, #seqs)))
  end
  zadd('completed', completed)
end
if requeued then wake() end
return keep(ARGV[2], out)  -- one key a batch, not a job
