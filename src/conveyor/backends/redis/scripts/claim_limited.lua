-- claim_limited: lease what fits a queue's rate and concurrency limits from its first
-- `scan` ready jobs; jobs held back stay queued and spend no attempt.
-- KEYS[1] queue base
-- ARGV: now, limit, worker id, lease token, lease deadline, again (as in claim), scan,
--       limits JSON:
--       {"q": [rate, per, concurrency] or null, "t": {task: [rate, per, concurrency, keyed]}}
--       (0 for "no such limit"); scopes as in conveyor/limits.py
-- Returns: {held back (0/1), one record per claimed job: {seq, FIELDS values...}...}; again:
--          as in claim.
local now, limit, worker, token, expires = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local scan = tonumber(ARGV[7])
local limits = cjson.decode(ARGV[8])
if resent(ARGV[6], token) then
  local kept = reclaimed(token)
  if #kept > 0 then
    table.insert(kept, 1, 0)
    return kept
  end
end
if limit == 0 or redis.call('EXISTS', key('paused')) == 1 then return {0} end
promote_due(now)

local function scopes(task, limit_key)
  local out = {}
  if limits.q ~= cjson.null then out[#out + 1] = {'queue', limits.q} end
  local t = limits.t[task]
  if t then
    local scope = 'task:' .. task
    if t[4] then scope = 'key:' .. task .. ':' .. (limit_key or '') end
    out[#out + 1] = {scope, t}
  end
  return out
end

-- Jobs running now, per scope: a scan of :active (one HMGET per running job).
local running = {}
for _, seq in ipairs(redis.call('ZRANGE', key('active'), 0, -1)) do
  local f = redis.call('HMGET', jkey(seq), 'task', 'limit_key')
  for _, s in ipairs(scopes(f[1], f[2])) do running[s[1]] = (running[s[1]] or 0) + 1 end
end

-- Starts within each scope's sliding window, counted once per scope.
local started = {}
local function starts(scope, per)
  if started[scope] == nil then
    local log = key('starts:' .. scope)
    redis.call('ZREMRANGEBYSCORE', log, '-inf', tonumber(now) - per)
    started[scope] = redis.call('ZCARD', log)
  end
  return started[scope]
end

local out, active, taken, held = {0}, {}, {}, 0
for _, member in ipairs(redis.call('ZRANGE', key('queued'), 0, scan - 1)) do
  if #taken >= limit then break end
  local seq = unpad(member)
  local f = redis.call('HMGET', jkey(seq), 'task', 'limit_key')
  local mine = scopes(f[1], f[2])
  local fits = f[1] ~= false  -- no hash here (a moving slot, see lease): it stays queued
  for _, s in ipairs(mine) do
    local rate, per, concurrency = s[2][1], s[2][2], s[2][3]
    if concurrency > 0 and (running[s[1]] or 0) >= concurrency then fits = false end
    if rate > 0 and starts(s[1], per) >= rate then fits = false end
  end
  if fits then
    for _, s in ipairs(mine) do
      running[s[1]] = (running[s[1]] or 0) + 1
      if s[2][1] > 0 then
        local log = key('starts:' .. s[1])
        started[s[1]] = started[s[1]] + 1
        redis.call('ZADD', log, now, seq .. ':' .. token)
        redis.call('PEXPIRE', log, math.ceil(s[2][2] * 1000) + 1000)  -- a quiet scope's log goes
      end
    end
    taken[#taken + 1] = member
    out[#out + 1] = lease(seq, now, worker, token, expires)
    push(active, expires, seq)
  else
    held = 1
  end
end
if #taken > 0 then redis.call('ZREM', key('queued'), unpack(taken)) end
if #active > 0 then zadd('active', active) end
out[1] = held
return out
