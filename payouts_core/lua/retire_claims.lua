-- Settlement.retire, first part (LIFECYCLE completed -> gone): shrink the final claims this
-- batch's items hold (indexes first..last) to archived claims, in one step per claim (a
-- concurrent settle sees the full claim or the archived one, never neither).
-- KEYS: batch, orders. ARGV[1]: {events (the ledger was checked to hold), batch_id, first, last}.
-- Reply: claims shrunk, or -1 when the batch changed since the ledger was checked.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], orders = KEYS[2]}
local head = read_fields(batch.key, {'state', 'events'})
if head.state ~= 'completed' or tonumber(head.events) ~= arg.events then return -1 end
local shrunk = 0
for index = arg.first, arg.last do
  local idx = tostring(index)
  local raw = redis.call('HGET', batch.orders, idx)
  if raw then
    local order = cjson.decode(raw)
    local claim = read_claim(order.claim)
    if (claim.state == 'paid' or claim.state == 'failed') and held_by(claim, arg.batch_id, idx) then
      local bucket, field = archived_claim_ref(order.claim)
      redis.call('HSET', bucket, field, archived_value(claim))
      redis.call('DEL', order.claim)
      shrunk = shrunk + 1
    end
  end
end
return shrunk
