-- extend: push lease deadlines forward and store progress and log lines.
-- KEYS[1] queue base
-- ARGV: lease deadline, then per renewal: seq, token, progress ('' none), n, n log lines
-- Returns: per renewal 1 (lease extended) or 0 (lease lost).
local expires = ARGV[1]
local out = {}
local a = 2
while a <= #ARGV do
  local seq, token, progress, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local job = jkey(seq)
  local held = redis.call('HMGET', job, 'state', 'lease_token')
  if held[1] == 'active' and held[2] == token then
    redis.call('HSET', job, 'lease_expires', expires)
    redis.call('ZADD', key('active'), expires, seq)
    note(seq, progress, n, a + 4)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 4 + n
end
return out
