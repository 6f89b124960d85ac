-- Settlement.conflicting_claims, the reads (the terms are compared in Python, rules.same_terms):
-- the claims of a new batch's distinct external ids that are paid or in flight. One call per
-- CLAIM_CHECK_CHUNK ids, pipelined: one script over 10,000 ids held Redis for every other client.
-- KEYS: claim keys of a chunk. ARGV[1]: {offset (of the chunk in the batch's distinct ids)}.
-- Reply (JSON): [{position (1-based, in the whole batch), terms, batch_id, index}]; an archived
-- paid claim has its terms tag and no batch_id.
local arg = cjson.decode(ARGV[1])
local held = {}
for i, key in ipairs(KEYS) do
  local claim = read_fields(key, {'state', 'terms', 'batch_id', 'index'})
  if claim.state == 'paid' or claim.state == 'inflight' then
    held[#held + 1] = {position = arg.offset + i, terms = claim.terms or '',
                       batch_id = claim.batch_id or '', index = claim.index or ''}
  elseif not claim.state then
    local archived = archived_claim(key)
    if archived and archived.state == 'paid' then
      held[#held + 1] = {position = arg.offset + i, terms = archived.tag, batch_id = '', index = ''}
    end
  end
end
if #held == 0 then return '[]' end
return cjson.encode(held)
