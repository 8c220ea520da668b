-- recover: requeue (or kill, when out of attempts) jobs whose lease expired.
-- KEYS[1] queue base
-- ARGV: now, the error to record, at most how many to recover
-- Returns: the seqs recovered.
local now, err, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', key('active'), '-inf', '(' .. now, 'LIMIT', 0, limit)
local requeued = false
for _, seq in ipairs(expired) do
  local job = jkey(seq)
  add_attempt(seq, err, '', now, redis.call('HGET', job, 'lease_owner'))
  clear_lease(seq)
  local counts = redis.call('HMGET', job, 'attempt', 'max_attempts')
  if tonumber(counts[1]) < tonumber(counts[2]) then
    move(seq, 'active', 'queued', queued_score(seq))
    requeued = true
  else
    redis.call('HSET', job, 'finished_at', now)
    move(seq, 'active', 'dead', now)
    release_unique(seq)
    finished(seq)
  end
end
if requeued then wake() end
return expired
