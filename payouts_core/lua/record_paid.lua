-- Settlement.record_paid (payouts_core/model.py): the provider settled under this item's key,
-- so the money moved for this item. KEYS: batch, items, orders.
-- ARGV[1]: {index, batch_id, now, e2e_id, claim_generation, event (the ledger event's detail)}.
-- Reply: the item's status.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3]}
local idx = tostring(arg.index)
local item, order = read_item(batch, idx)
if not item then return 'orphan' end
if FINAL[item.status] then
  -- A late success under this item's own claim (a concurrent delivery was still paying when
  -- another gave up): money moved, so the item is paid, unless the external_id was claimed
  -- again since (then reconciliation reports the second payment).
  local claim = read_claim(order.claim)
  if not (item.status == 'failed' and claim.state == 'failed' and held_by(claim, arg.batch_id, idx)
          and claim.gen == tostring(arg.claim_generation)) then
    return item.status
  end
  redis.call('HINCRBY', batch.key, 'failed', -1)
  redis.call('HINCRBY', batch.key, 'processed', -1)
  redis.call('HINCRBY', STATS, 'failed', -1)
end
redis.call('HSET', order.claim, 'state', 'paid', 'batch_id', arg.batch_id, 'index', idx,
           'e2e_id', arg.e2e_id, 'paid_at', arg.now)
item.e2e_id = arg.e2e_id
item.failure_code = nil
item.failure_reason = nil
local detail = arg.event
detail.claim_generation = arg.claim_generation
finish(batch, idx, item, 'paid', detail)
return 'paid'
