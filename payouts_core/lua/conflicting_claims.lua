-- KEYS: claim keys of a new batch's distinct external ids (a chunk of them). ARGV: the chunk's
-- offset. One call per 1,000 ids, pipelined (10,000 pipelined HMGETs cost the API ~0.4 s of CPU):
-- {position in the whole batch, terms, batch_id, index} of every claim paid or in flight; for an
-- archived paid claim, terms is the digest's first 16 hex digits and batch_id is empty.
local held = {}
local offset = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local c = redis.call('HMGET', key, 'state', 'terms', 'batch_id', 'index')
  if c[1] == 'paid' or c[1] == 'inflight' then
    held[#held + 1] = {offset + i, c[2] or '', c[3] or '', c[4] or ''}
  elseif not c[1] then
    local archived = archived_claim(key)
    if archived and archived.state == 'paid' then  -- terms: the digest's first 16 hex digits
      held[#held + 1] = {offset + i, raw_to_hex(archived.tag), '', ''}
    end
  end
end
return held
