-- cancel: cancel unfinished jobs; a running job's holder finds its lease gone.
-- KEYS[1] queue base
-- ARGV: now, call (an id per call, see keep), then seqs
-- Returns: per seq 1 (cancelled by this call) or 0 (unknown or already final).
local now = ARGV[1]
local answered = kept(ARGV[2])
if answered then return answered end
local out = {}
for i = 3, #ARGV do
  local seq = ARGV[i]
  local state = redis.call('HGET', jkey(seq), 'state')
  if state and LIVE[state] then
    clear_lease(seq)
    redis.call('HSET', jkey(seq), 'finished_at', now)
    move(seq, state, 'cancelled', now)
    release_unique(seq)
    finished(seq)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return keep(ARGV[2], out)
