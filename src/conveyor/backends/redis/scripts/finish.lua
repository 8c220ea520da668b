-- finish: persist attempt outcomes and release their leases, fenced by the lease token.
-- KEYS[1] queue base
-- ARGV: now, then per outcome 11 values + n log lines: seq, token, kind, result, error,
--       traceback, retry_at, worker, progress, n, n log lines ('' for none)
--       kind: completed | retry | dead | released | snoozed
-- Returns: per outcome 1 (stored) or 0 (lease lost: the job is no longer ours).
local now = ARGV[1]
local out = {}
local requeued = false
local a = 2
while a <= #ARGV do
  local seq, token, kind = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local n = tonumber(ARGV[a + 9])
  local job = jkey(seq)
  local held = redis.call('HMGET', job, 'state', 'lease_token')
  if held[1] == 'active' and held[2] == token then
    if ARGV[a + 8] ~= '' then redis.call('HSET', job, 'progress', ARGV[a + 8]) end
    for i = 1, n do redis.call('RPUSH', key('logs:' .. seq), ARGV[a + 9 + i]) end
    clear_lease(seq)
    if kind == 'completed' then
      redis.call('HSET', job, 'result', ARGV[a + 3], 'finished_at', now)
      move(seq, 'active', 'completed', now)
    elseif kind == 'released' then
      redis.call('HINCRBY', job, 'attempt', -1)
      move(seq, 'active', 'queued', queued_score(seq))
      requeued = true
    elseif kind == 'snoozed' then
      local at = ARGV[a + 6]
      if at == '' then at = now end
      redis.call('HINCRBY', job, 'attempt', -1)
      redis.call('HSET', job, 'run_at', at)
      move(seq, 'active', 'scheduled', at)
    else
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
    if TERMINAL[redis.call('HGET', job, 'state')] then
      release_unique(seq)
      finished(seq)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 10 + n
end
if requeued then wake() end
return out
