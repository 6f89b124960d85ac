-- KEYS: batch, items, orders. ARGV: index, duplicate_of (JSON: batch_id, index, e2e_id, as the
-- ledger records the payment). Records a `duplicate` of a payment whose claim was archived,
-- after settle asked the ledger where it was paid; again checked here, atomically.
local idx = ARGV[1]
local raw = redis.call('HGET', KEYS[2], idx)
local order_raw = redis.call('HGET', KEYS[3], idx)
if not raw or not order_raw then return {'orphan'} end
local item = cjson.decode(raw)
if FINAL[item.status] then return {item.status} end
local order = cjson.decode(order_raw)
local a = archived_claim(order.claim)
if redis.call('EXISTS', order.claim) == 1 or not a or a.state ~= 'paid'
   or a.tag ~= terms_tag(order.terms) then
  return {'changed'}  -- settle decides again
end
item.duplicate_of = cjson.decode(ARGV[2])
finish(KEYS[1], KEYS[2], KEYS[3], idx, item, 'duplicate', {duplicate_of = item.duplicate_of,
                                                           archived = true})
return {'duplicate'}
