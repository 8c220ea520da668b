-- watch: mark a job as awaited (its seq is then published on <base>:done when it ends)
-- and read it, in one step so no finish can slip between.
-- KEYS[1] queue base
-- ARGV: seq
-- Returns: {seq, FIELDS values...}, or false for an unknown job.
local seq = ARGV[1]
if redis.call('EXISTS', jkey(seq)) == 0 then return false end
redis.call('HSET', jkey(seq), 'watched', '1')
local rec = record(seq)
table.insert(rec, 1, seq)
return rec
