-- Helpers every script shares; prepended to each script when it is loaded.
--
-- KEYS[1] is the queue's key base, "<prefix>:{<queue>}". The braces are a hash
-- tag: every key of one queue lives in one Cluster slot, so each script touches
-- one slot. Keys under the base:
--   :j:<seq>      hash   one job (fields as in FIELDS below, plus `watched`); `queue` is
--                        the key's, and fields at their default are absent
--   :logs:<seq>   list   the job's log lines, JSON [at, message, fields]
--   :queued       zset   ready jobs; score -priority, member the seq zero-padded
--                        to 16 digits, so equal priorities pop in enqueue order
--   :scheduled    zset   score run_at; :active  zset  score lease deadline
--   :completed, :dead, :cancelled   zset  score finished_at (retention order)
--   :waiting      zset   flow jobs waiting for their children, score seq
--   :starts:<scope>  zset  starts of a rate-limited scope (see claim_limited), score time
--   :all          zset   every job, score seq (listing, newest first)
--   :unique       hash   unique key -> seq of the live job holding it
--   :unique_done  hash   unique key -> seq of the last job that completed with it
--   :ticks        hash   schedule -> last tick that got its job
--   :paused       string present while the queue is paused
--   :answer:<call>  string  a call's reply, kept a minute for its resend (see keep)
-- On one server KEYS[2] and KEYS[3] are the prefix's sequence counter and its list of
-- queues (see sequence and register); on Cluster they are in other slots, so absent.
-- Channels: <base>:wake (work arrived on an empty queue), <base>:done (message: the seq of
-- a watched job that finished), each with DB appended: pub/sub spans a server's
-- databases, and DB ("@<n>" outside database 0, set when the script is loaded) keeps
-- apps on two databases from waking each other. Times are seconds as the client's
-- clock formats them.

local base = KEYS[1]
local function key(name) return base .. ':' .. name end
local function jkey(seq) return base .. ':j:' .. seq end

local FIELDS = {'task', 'queue', 'state', 'payload', 'priority', 'attempt', 'max_attempts',
  'retries', 'timeout', 'run_at', 'enqueued_at', 'started_at', 'finished_at', 'unique_key',
  'meta', 'lease_owner', 'lease_token', 'lease_expires', 'result', 'error', 'attempts', 'progress',
  'parent_id', 'children', 'flow', 'limit_key'}
local TERMINAL = {completed = true, dead = true, cancelled = true}
local LIVE = {scheduled = true, queued = true, active = true, waiting = true}

local function pad(seq) return string.rep('0', 16 - #seq) .. seq end
local function unpad(member) return (string.gsub(member, '^0+(%d)', '%1')) end

-- A zset member for `seq` in `state`'s set: padded in :queued only.
local function member(state, seq)
  if state == 'queued' then return pad(seq) end
  return seq
end

-- Each field's position in FIELDS.
local AT = {}
for i, name in ipairs(FIELDS) do AT[name] = i end

-- A job's FIELDS values in order (false where absent). HGETALL and placing its ~9
-- stored fields here cost Redis less than HMGET of all 26, which looks each one up in
-- the hash's listpack in turn (measured per claimed job: see the README).
local function record(seq)
  local flat = redis.call('HGETALL', jkey(seq))
  local rec = {false, false, false, false, false, false, false, false, false, false, false, false, false,
    false, false, false, false, false, false, false, false, false, false, false, false, false}
  for i = 1, #flat, 2 do
    local at = AT[flat[i]]
    if at then rec[at] = flat[i + 1] end
  end
  return rec
end

-- Move a job between state sets; `score` orders it in the new set.
local function move(seq, from, to, score)
  redis.call('ZREM', key(from), member(from, seq))
  redis.call('ZADD', key(to), score, member(to, seq))
  redis.call('HSET', jkey(seq), 'state', to)
end

local function queued_score(seq)
  return -tonumber(redis.call('HGET', jkey(seq), 'priority'))
end

local function wake()
  if redis.call('EXISTS', key('paused')) == 0 then
    redis.call('PUBLISH', key('wake') .. DB, '1')
  end
end

-- Tell a waiter (job.result()) that the job reached a final state. `watched`: the
-- job's `watched` field when the caller has read it already (nil: read it here).
local function finished(seq, watched)
  if watched == nil then watched = redis.call('HEXISTS', jkey(seq), 'watched') == 1 end
  if watched then
    redis.call('PUBLISH', key('done') .. DB, seq)
  end
end

-- A final job gives its unique key back, so a new job may take it; a completed one is
-- remembered in :unique_done for `unique_for`.
local function release_unique(seq, unique, completed)
  if unique == nil then unique = redis.call('HGET', jkey(seq), 'unique_key') end
  if unique and redis.call('HGET', key('unique'), unique) == seq then
    redis.call('HDEL', key('unique'), unique)
  end
  if unique and completed then redis.call('HSET', key('unique_done'), unique, seq) end
end

-- A deleted job's key no longer points at it in :unique_done.
local function forget_done(seq)
  local unique = redis.call('HGET', jkey(seq), 'unique_key')
  if unique and redis.call('HGET', key('unique_done'), unique) == seq then
    redis.call('HDEL', key('unique_done'), unique)
  end
end

-- Store progress ('' for none) and `n` log lines found in ARGV from index `first`.
local function note(seq, progress, n, first)
  if progress ~= '' then redis.call('HSET', jkey(seq), 'progress', progress) end
  for i = first, first + n - 1 do redis.call('RPUSH', key('logs:' .. seq), ARGV[i]) end
end

local function clear_lease(seq)
  redis.call('HSET', jkey(seq), 'lease_owner', '', 'lease_token', '', 'lease_expires', '')
end

local function json_or_null(value)
  if value and value ~= '' then return cjson.encode(value) end
  return 'null'
end

local function number_or_null(value)
  if value and value ~= '' then return value end
  return 'null'
end

-- Append one failed attempt, [attempt, error, traceback, started_at, finished_at, worker],
-- to the job's JSON list. Timestamps are copied as text: cjson would round them to 14 digits.
local function add_attempt(seq, err, traceback, now, worker)
  local job = jkey(seq)
  local fields = redis.call('HMGET', job, 'attempt', 'started_at', 'attempts')
  local entry = '[' .. fields[1] .. ',' .. cjson.encode(err) .. ',' .. json_or_null(traceback) .. ','
    .. number_or_null(fields[2]) .. ',' .. now .. ',' .. json_or_null(worker) .. ']'
  local list = fields[3]
  if not list or list == '[]' then
    list = '[' .. entry .. ']'
  else
    list = string.sub(list, 1, -2) .. ',' .. entry .. ']'
  end
  redis.call('HSET', job, 'attempts', list, 'error', err)
end

-- Zset writes of a batch, sent as one ZADD per set at the end: on a slow host each
-- redis.call costs ~3.6 us, so per-job ZADDs were a third of a script's time.
local function batch() return {queued = {}, scheduled = {}, waiting = {}, all = {}} end

local function zadd(name, pairs)
  for i = 1, #pairs, 2000 do  -- unpack() has a C-stack limit: 1000 pairs a call
    redis.call('ZADD', key(name), unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end

local function flush(pending)
  for name, pairs in pairs(pending) do
    if #pairs > 0 then zadd(name, pairs) end
  end
end

local function push(list, score, value)
  list[#list + 1] = score
  list[#list + 1] = value
end

-- A later enqueue with a debounced key: the holder, if not started, takes the new
-- payload and run time.
local function debounce(seq, payload, run_at, now)
  local state = redis.call('HGET', jkey(seq), 'state')
  if state ~= 'scheduled' and state ~= 'queued' then return end
  redis.call('HSET', jkey(seq), 'payload', payload, 'run_at', run_at)
  if tonumber(run_at) > tonumber(now) then
    move(seq, state, 'scheduled', run_at)
  else
    move(seq, state, 'queued', queued_score(seq))
  end
end

-- The job that completed with `unique` less than `window` seconds ago, if any.
local function recently_completed(unique, window, now)
  local seq = redis.call('HGET', key('unique_done'), unique)
  if not seq then return nil end
  local done = redis.call('HMGET', jkey(seq), 'state', 'finished_at')
  if done[1] == 'completed' and tonumber(done[2]) > tonumber(now) - tonumber(window) then return seq end
  return nil
end

-- A plain job's state, its score in that state's sorted set, and its hash fields after
-- task, state and payload: enqueue_one.lua and enqueue_many.lua both store a job
-- with no unique key, flow or per-key limit from these, so they store it alike.
local function plain(now, priority, max_attempts, retries, timeout, run_at, meta)
  local state, score = 'queued', -tonumber(priority)
  if tonumber(run_at) > tonumber(now) then state, score = 'scheduled', run_at end
  local rest = {'priority', priority, 'max_attempts', max_attempts, 'retries', retries, 'run_at', run_at,
    'enqueued_at', now}
  if timeout ~= '' then push(rest, 'timeout', timeout) end
  if meta ~= '{}' then push(rest, 'meta', meta) end
  return state, score, rest
end

-- Store one job into `pending` (see batch). Fields left at their defaults are not
-- written (attempt 0, no attempts, meta {}): a plain job's hash has 8 fields, as
-- enqueue_one.lua and enqueue_many.lua write it too.
-- `extras` ('' or nil for most jobs) is JSON with any of p (parent id), c (children
-- ids, JSON text), f (flow options, JSON text), w (true: the job waits), uf (the
-- unique_for window in seconds), d (true: debounce), k (the per-key limit's key).
-- Returns seq, created (0/1); when a live job holds the unique key, that job's seq.
local function insert(pending, seq, now, task, payload, priority, max_attempts, retries, timeout,
                      run_at, unique, meta, extras)
  local l = {}
  if extras and extras ~= '' then l = cjson.decode(extras) end
  if unique ~= '' then
    local holder = redis.call('HGET', key('unique'), unique)
    if holder then
      if l.d then debounce(holder, payload, run_at, now) end
      return holder, 0
    end
    if l.uf then
      local recent = recently_completed(unique, l.uf, now)
      if recent then return recent, 0 end
    end
    redis.call('HSET', key('unique'), unique, seq)
  end
  local state = 'queued'
  if tonumber(run_at) > tonumber(now) then state = 'scheduled' end
  local job = jkey(seq)
  redis.call('HSET', job, 'task', task, 'state', state, 'payload', payload, 'priority', priority,
    'max_attempts', max_attempts, 'retries', retries, 'run_at', run_at, 'enqueued_at', now)
  if timeout ~= '' then redis.call('HSET', job, 'timeout', timeout) end
  if unique ~= '' then redis.call('HSET', job, 'unique_key', unique) end
  if meta ~= '{}' then redis.call('HSET', job, 'meta', meta) end
  do
    if l.p then redis.call('HSET', job, 'parent_id', l.p) end
    if l.c then redis.call('HSET', job, 'children', l.c) end
    if l.f then redis.call('HSET', job, 'flow', l.f) end
    if l.k then redis.call('HSET', job, 'limit_key', l.k) end
    if l.w then
      state = 'waiting'
      redis.call('HSET', job, 'state', state)
    end
  end
  if state == 'waiting' then
    push(pending.waiting, seq, seq)
  elseif state == 'queued' then
    push(pending.queued, -tonumber(priority), pad(seq))
  else
    push(pending.scheduled, run_at, seq)
  end
  push(pending.all, seq, seq)
  return seq, 1
end

-- The prefix's list of queue names (KEYS[3], a set): counts, listing, the recovery sweep
-- and the retention pass read every queue on it. Only where the script may reach it (one
-- server): on Cluster it lives in another slot, and the client adds a queue before its
-- first job and never takes one off.
-- Scripts that store jobs add their queue in the same atomic step, whenever the queue may
-- have been empty: then no job is ever in a queue the list lacks, and forget_if_empty
-- may take a queue off without a race with a producer.
local function register(queue)
  if KEYS[3] then redis.call('SADD', KEYS[3], queue) end
end

-- Take the queue off the list once it holds no job (every job is in :all) and is not
-- paused: else the list only grows, and a sweep of 2,000 queues whose jobs were all
-- purged still read each one.
local function forget_if_empty(queue)
  if KEYS[3] and redis.call('EXISTS', key('all'), key('paused')) == 0 then
    redis.call('SREM', KEYS[3], queue)
  end
end

-- Sequence numbers: KEYS[2] is the prefix's counter when the script may reach it
-- (one server); on Cluster the client takes them first and passes `first` (> 0). '0' and
-- 'r' (a resend, see stored_by_lost_call) take them here.
local function sequence(first, count)
  local given = tonumber(first)
  if given and given > 0 then return given end
  return redis.call('INCRBY', KEYS[2], count) - count + 1
end

-- A job's identity for stored_by_lost_call: what two calls' jobs enqueued at the same
-- instant would have to share for one to be taken for the other.
local function identity(task, payload, unique) return task .. '\0' .. payload .. '\0' .. unique end

-- Enqueue scripts that take their seqs themselves are resent after a dropped connection
-- (see Lane.run) with first seq 'r': the lost call may have run, and a second store would
-- duplicate its jobs. Whether it ran is read from the queue's newest jobs, newest first:
-- one the lost call stored has its enqueued_at (the client's `now`, to the microsecond)
-- and an identity in `wanted` (identity -> the job's offset in the call). Returns that
-- job's seq and offset, or nil once a job enqueued a minute before `now` is reached
-- (clients' clocks may differ that much) or 10,000 jobs were read: the resend follows at
-- once, so the lost call's jobs are among the newest.
local function stored_by_lost_call(now, wanted)
  local oldest = tonumber(now) - 60
  for start = 0, 9800, 200 do
    local seqs = redis.call('ZREVRANGE', key('all'), start, start + 199)
    for _, seq in ipairs(seqs) do
      local f = redis.call('HMGET', jkey(seq), 'enqueued_at', 'task', 'payload', 'unique_key')
      if f[1] == now then
        local offset = wanted[identity(f[2], f[3], f[4] or '')]
        if offset then return seq, offset end
      elseif f[1] and tonumber(f[1]) < oldest then
        return nil
      end
    end
    if #seqs < 200 then return nil end
  end
  return nil
end

-- Promote due scheduled jobs, a bounded batch per call so one call stays short.
-- A job whose hash is not on this node yet (a moving slot, see lease) stays scheduled.
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', key('scheduled'), '-inf', now, 'LIMIT', 0, 1000)
  for _, seq in ipairs(due) do
    local priority = redis.call('HGET', jkey(seq), 'priority')
    if priority then move(seq, 'scheduled', 'queued', -tonumber(priority)) end
  end
end

-- Whether a claim may be the resend of one Redis ran and whose reply was lost (see
-- reclaimed). `again` is '1' on the lane's own resend; '2' asks Redis: the first call
-- with a token leaves a marker for 60 s, so a resend finds it. Cluster passes '2', as
-- its client resends by itself after a connection error; the marker costs one SET a call.
local function resent(again, token)
  if again == '1' then return true end
  return again == '2' and not redis.call('SET', key('claimed:' .. token), '1', 'NX', 'EX', '60')
end

-- The jobs an earlier claim with `token` leased and still holds, as claim returns them.
-- Asked for when that claim's reply may have been lost (a dropped connection, a server
-- killed after the write): else they would sit leased until the lease ran out, and then
-- count as a failed attempt. Scans :active, so only such rare calls ask.
local function reclaimed(token)
  local out = {}
  for _, seq in ipairs(redis.call('ZRANGE', key('active'), 0, -1)) do
    if redis.call('HGET', jkey(seq), 'lease_token') == token then
      local rec = record(seq)
      table.insert(rec, 1, seq)
      out[#out + 1] = rec
    end
  end
  return out
end

-- Lease one job taken off :queued (the caller adds it to :active); returns its record
-- as it now is, seq first (FIELDS positions: 3 state, 6 attempt, 12 started_at, 16-18 lease).
-- nil, writing nothing, when its hash is not on this node: while a Cluster slot moves,
-- keys move one by one, and a queue's set can arrive before its jobs' hashes. Leased,
-- such a job would be a partial hash here, which blocks the move and loses the job.
local function lease(seq, now, worker, token, expires)
  local rec = record(seq)
  if not rec[3] then return nil end
  local attempt = string.format('%d', tonumber(rec[6] or '0') + 1)
  redis.call('HSET', jkey(seq), 'state', 'active', 'attempt', attempt, 'started_at', now,
    'lease_owner', worker, 'lease_token', token, 'lease_expires', expires)
  rec[3], rec[6], rec[12], rec[16], rec[17], rec[18] = 'active', attempt, now, worker, token, expires
  table.insert(rec, 1, seq)
  return rec
end

-- The reply of an earlier call with this id, if it ran in the last minute (see keep), else
-- nil. Replies kept are lists of integers (a count is a list of one).
local function kept(call)
  local text = redis.call('GET', key('answer:' .. call))
  if not text then return nil end
  local out = {}
  for n in string.gmatch(text, '%d+') do out[#out + 1] = tonumber(n) end
  return out
end

-- Keep a call's reply for a minute under its id, and return it. A call resent after its
-- reply was lost (by the lane after a dropped connection, by Cluster's client, or by the
-- worker after an error) comes at once or after a backoff of seconds; run again, a call
-- that cancelled, requeued or finished jobs would answer that it had not.
local function keep(call, out)
  redis.call('SET', key('answer:' .. call), table.concat(out, ','), 'EX', 60)
  return out
end
