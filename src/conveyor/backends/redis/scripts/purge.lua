-- purge: delete finished jobs of one state, oldest first, with their logs.
-- KEYS[1] queue base; KEYS[2], KEYS[3] the prefix's sequence counter (unused) and list of
-- queues (single server only: see forget_if_empty)
-- ARGV: state (completed | dead | cancelled), older than ('+inf' for any age), at most how
--       many, queue
-- Returns: how many were deleted.
local state, older, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not TERMINAL[state] then return redis.error_reply('purge: not a final state: ' .. state) end
local bound = older
if older ~= '+inf' then bound = '(' .. older end
local doomed = redis.call('ZRANGEBYSCORE', key(state), '-inf', bound, 'LIMIT', 0, limit)
for _, seq in ipairs(doomed) do
  if state == 'completed' then forget_done(seq) end
  redis.call('DEL', jkey(seq), key('logs:' .. seq))
  redis.call('ZREM', key('all'), seq)
end
if #doomed > 0 then
  redis.call('ZREM', key(state), unpack(doomed))
  forget_if_empty(ARGV[4])
end
return #doomed
