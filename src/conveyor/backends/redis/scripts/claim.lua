-- claim: lease up to `limit` ready jobs of one queue, promoting due scheduled jobs first.
-- KEYS[1] queue base
-- ARGV: now, limit, worker id, lease token, lease deadline
-- Returns: one record per claimed job: {seq, FIELDS values...}; {} while paused.
local now, limit, worker, token, expires = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', key('paused')) == 1 then return {} end
-- Promote due scheduled jobs, a bounded batch per call so one call stays short.
local due = redis.call('ZRANGEBYSCORE', key('scheduled'), '-inf', now, 'LIMIT', 0, 1000)
for _, seq in ipairs(due) do
  move(seq, 'scheduled', 'queued', queued_score(seq))
end
local popped = redis.call('ZPOPMIN', key('queued'), limit)
local out, active = {}, {}
for i = 1, #popped, 2 do
  local seq = unpad(popped[i])
  local rec = record(seq)
  local attempt = string.format('%d', tonumber(rec[6] or '0') + 1)
  redis.call('HSET', jkey(seq), 'state', 'active', 'attempt', attempt, 'started_at', now,
    'lease_owner', worker, 'lease_token', token, 'lease_expires', expires)
  -- The record as it now is (FIELDS positions: 3 state, 6 attempt, 12 started_at, 16-18 lease).
  rec[3], rec[6], rec[12], rec[16], rec[17], rec[18] = 'active', attempt, now, worker, token, expires
  table.insert(rec, 1, seq)
  out[#out + 1] = rec
  push(active, expires, seq)
end
if #active > 0 then zadd('active', active) end
return out
