-- resume: move flow jobs on from waiting, once: to queued, or to dead with an error.
-- KEYS[1] queue base
-- ARGV: now, call (an id per call, see keep), then per job 2 values: seq, error ('' to queue it)
-- Returns: per job 1 (moved by this call) or 0 (unknown or no longer waiting).
local now = ARGV[1]
local answered = kept(ARGV[2])
if answered then return answered end
local out = {}
local queued = false
for a = 3, #ARGV, 2 do
  local seq, err = ARGV[a], ARGV[a + 1]
  if redis.call('HGET', jkey(seq), 'state') == 'waiting' then
    if err == '' then
      redis.call('HSET', jkey(seq), 'run_at', now)
      move(seq, 'waiting', 'queued', queued_score(seq))
      queued = true
    else
      redis.call('HSET', jkey(seq), 'finished_at', now, 'error', err)
      move(seq, 'waiting', 'dead', now)
      finished(seq)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if queued then wake() end
return keep(ARGV[2], out)
