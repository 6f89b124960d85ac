-- KEYS: batch, orders. ARGV: events the ledger was checked to hold, batch_id, first index, last.
-- Shrinks the final claims this batch's items hold (indexes first..last) to archived claims, in
-- one step per claim (a concurrent settle sees the full claim or the archived one, never
-- neither). Refused (-1) when the batch changed since the ledger was checked.
local b = redis.call('HMGET', KEYS[1], 'state', 'events')
if b[1] ~= 'completed' or b[2] ~= ARGV[1] then return -1 end
local shrunk = 0
for idx = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  local raw = redis.call('HGET', KEYS[2], tostring(idx))
  if raw then
    local order = cjson.decode(raw)
    local c = redis.call('HMGET', order.claim, 'state', 'batch_id', 'index', 'gen', 'terms')
    if (c[1] == 'paid' or c[1] == 'failed') and c[2] == ARGV[2] and c[3] == tostring(idx) then
      local key, field = archived_claim_ref(order.claim)
      redis.call('HSET', key, field, string.sub(c[1], 1, 1) .. c[4] .. terms_tag(c[5]))
      redis.call('DEL', order.claim)
      shrunk = shrunk + 1
    end
  end
end
return shrunk
