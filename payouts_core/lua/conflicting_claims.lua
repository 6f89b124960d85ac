-- KEYS: claim keys of a new batch's distinct external ids (a chunk of them). ARGV: the chunk's
-- offset. One call per 1,000 ids, pipelined (10,000 pipelined HMGETs cost the API ~0.4 s of CPU):
-- {position in the whole batch, terms, batch_id, index} of every claim paid or in flight.
local held = {}
local offset = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local c = redis.call('HMGET', key, 'state', 'terms', 'batch_id', 'index')
  if c[1] == 'paid' or c[1] == 'inflight' then
    held[#held + 1] = {offset + i, c[2] or '', c[3] or '', c[4] or ''}
  end
end
return held
