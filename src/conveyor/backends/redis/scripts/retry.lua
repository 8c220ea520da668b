-- retry: requeue dead or cancelled jobs with a fresh retry budget.
-- KEYS[1] queue base
-- ARGV: now, call (an id per call, see keep), then seqs
-- Returns: per seq 1 (requeued) or 0 (not dead/cancelled, or a live job holds its unique key).
local now = ARGV[1]
local answered = kept(ARGV[2])
if answered then return answered end
local out = {}
local requeued = false
for i = 3, #ARGV do
  local seq = ARGV[i]
  local job = jkey(seq)
  local f = redis.call('HMGET', job, 'state', 'unique_key', 'attempt', 'retries')
  local ok = f[1] == 'dead' or f[1] == 'cancelled'
  if ok and f[2] and redis.call('HEXISTS', key('unique'), f[2]) == 1 then ok = false end
  if ok then
    if f[2] then redis.call('HSET', key('unique'), f[2], seq) end
    redis.call('HSET', job, 'run_at', now,
      'max_attempts', string.format('%d', tonumber(f[3] or '0') + tonumber(f[4]) + 1))
    redis.call('HDEL', job, 'finished_at')
    move(seq, f[1], 'queued', queued_score(seq))
    requeued = true
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if requeued then wake() end
return keep(ARGV[2], out)
