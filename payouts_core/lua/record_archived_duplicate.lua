-- Settlement.record_archived_duplicate (payouts_core/model.py): a `duplicate` of a payment whose
-- claim was archived, where the ledger says it was paid (settle asked it); checked again here,
-- atomically. KEYS: batch, items, orders. ARGV[1]: {index, duplicate_of: {batch_id, index, e2e_id}}.
-- Reply: the item's status, or 'changed' (the claim is no longer that payment: decide again).
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3]}
local idx = tostring(arg.index)
local item, order = read_item(batch, idx)
if not item then return 'orphan' end
if FINAL[item.status] then return item.status end
local archived = archived_claim(order.claim)
if redis.call('EXISTS', order.claim) == 1 or not archived or archived.state ~= 'paid'
   or not same_terms(archived.tag, order.terms) then
  return 'changed'
end
item.duplicate_of = arg.duplicate_of
finish(batch, idx, item, 'duplicate', {duplicate_of = item.duplicate_of, archived = true})
return 'duplicate'
