-- delete: remove jobs whatever their state, with their logs.
-- KEYS[1] queue base
-- ARGV: seqs
-- Returns: how many existed.
local deleted = 0
for _, seq in ipairs(ARGV) do
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
return deleted
