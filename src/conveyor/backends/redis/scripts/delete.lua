-- delete: remove jobs whatever their state, with their logs.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter (unused) and list of
-- queues (single server only: see forget_if_empty)
-- ARGV: call (an id per call, see keep), queue, then seqs
-- Returns: how many existed.
local answered = kept(ARGV[1])
if answered then return answered[1] end
local deleted = 0
for i = 3, #ARGV do
  local seq = ARGV[i]
  local state = redis.call('HGET', jkey(seq), 'state')
  if state then
    release_unique(seq)
    forget_done(seq)
    redis.call('ZREM', key(state), member(state, seq))
    redis.call('ZREM', key('all'), seq)
    redis.call('DEL', jkey(seq), key('logs:' .. seq))
    deleted = deleted + 1
  end
end
if deleted > 0 then forget_if_empty(ARGV[2]) end
return keep(ARGV[1], {deleted})[1]
