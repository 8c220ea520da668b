-- delete: remove jobs whatever their state, with their logs.
-- KEYS[1] queue base
-- ARGV: call (an id per call, see keep), then seqs
-- Returns: how many existed.
local answered = kept(ARGV[1])
if answered then return answered[1] end
local deleted = 0
for i = 2, #ARGV do
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
return keep(ARGV[1], {deleted})[1]
