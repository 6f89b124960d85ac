-- Settlement.record_failed (payouts_core/model.py): no money moved for this item; it ends
-- failed and frees its claim if it held it. KEYS: batch, items, orders.
-- ARGV[1]: {index, batch_id, now, code, reason, event (the ledger event's detail)}.
-- Reply: the item's status.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3]}
local idx = tostring(arg.index)
local item, order = read_item(batch, idx)
if not item then return 'orphan' end
if FINAL[item.status] then return item.status end
local claim = read_claim(order.claim)
if claim.state == 'inflight' and held_by(claim, arg.batch_id, idx) then
  redis.call('HSET', order.claim, 'state', 'failed', 'failed_at', arg.now)
end
item.failure_code = arg.code
item.failure_reason = arg.reason
finish(batch, idx, item, 'failed', arg.event)
return 'failed'
