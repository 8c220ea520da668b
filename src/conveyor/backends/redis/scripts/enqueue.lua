-- enqueue: store a batch of jobs for one queue, in order.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter and list of queues
-- (single server only)
-- ARGV: queue, now, first seq (0: take them from KEYS[2]; r: the same, on a resend), then
--       per job 11 values: offset (the job's seq is first + offset), task, payload,
--       priority, max_attempts, retries, timeout, run_at, unique_key, meta, extras ('' for
--       none; see insert)
-- Returns: per job {seq, created}: created 0 when a live job held the unique key
--          (seq is then that job's). Publishes <base>:wake if the queue was empty.
--          A job whose seq is stored already is not stored again: a call resent after a
--          dropped connection, whose lost call ran, returns what that call stored.
local queue, now = ARGV[1], ARGV[2]
local count = (#ARGV - 3) / 11

-- Where a lost call stored this batch, if it ran (see stored_by_lost_call). Only created
-- jobs are found: a repeated job without a unique key is found at its last place in the
-- batch (the newest), one with a key at its first (a later one found it held).
local function lost_first()
  local wanted = {}
  for i = 0, count - 1 do
    local a = 4 + i * 11
    local id = identity(ARGV[a + 1], ARGV[a + 2], ARGV[a + 8])
    if ARGV[a + 8] == '' or not wanted[id] then wanted[id] = tonumber(ARGV[a]) end
  end
  local seq, offset = stored_by_lost_call(now, wanted)
  return seq and tonumber(seq) - offset
end

-- Seqs the client took (flows, several queues, Cluster) may be a resend's too.
local first = ARGV[3] == 'r' and lost_first()
local again = first or ARGV[3] ~= '0' and ARGV[3] ~= 'r'
first = first or sequence(ARGV[3], count)
local was_empty = redis.call('ZCARD', key('queued')) == 0
register(queue)
local pending = batch()
local out = {}
for i = 0, count - 1 do
  local a = 4 + i * 11
  local seq = string.format('%d', first + tonumber(ARGV[a]))
  local id, created = seq, 1
  if not (again and redis.call('EXISTS', jkey(seq)) == 1) then
    id, created = insert(pending, seq, now, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
      ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10])
  end
  out[i + 1] = {id, created}
end
flush(pending)
-- Jobs queued by this batch need no second ZCARD (one redis.call is ~5 us of ~30);
-- a debounce may have moved an earlier job into :queued, so look when none were.
if was_empty and (#pending.queued > 0 or redis.call('ZCARD', key('queued')) > 0) then wake() end
return out
