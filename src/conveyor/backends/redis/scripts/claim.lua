-- claim: lease up to `limit` ready jobs of one queue, promoting due scheduled jobs first.
-- KEYS[1] queue base
-- ARGV: now, limit, worker id, lease token, lease deadline, again ('1': this token may
--       have claimed already, its reply lost; '2': ask the token's marker; see resent)
-- Returns: one record per claimed job: {seq, FIELDS values...}; {} while paused. Again:
--          the jobs the token holds, if any, and no new ones.
local now, limit, worker, token, expires = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if resent(ARGV[6], token) then
  local kept = reclaimed(token)
  if #kept > 0 then return kept end
end
if limit == 0 or redis.call('EXISTS', key('paused')) == 1 then return {} end
promote_due(now)
local popped = redis.call('ZPOPMIN', key('queued'), limit)
local out, active, away = {}, {}, {}
for i = 1, #popped, 2 do
  local seq = unpad(popped[i])
  local rec = lease(seq, now, worker, token, expires)
  if rec then
    out[#out + 1] = rec
    push(active, expires, seq)
  else  -- its hash is on another node (a moving slot, see lease): it waits, in its place
    push(away, popped[i + 1], popped[i])
  end
end
if #active > 0 then zadd('active', active) end
if #away > 0 then zadd('queued', away) end
return out
