-- KEYS: batch, items, orders. ARGV: index, batch_id, outcome, now, then e2e_id and claim
-- generation (paid) or failure code and reason (failed), then the event's detail (JSON).
-- Records the outcome once.
local idx = ARGV[1]
local raw = redis.call('HGET', KEYS[2], idx)
local order_raw = redis.call('HGET', KEYS[3], idx)
if not raw or not order_raw then return {'orphan'} end
local item = cjson.decode(raw)
local claim_key = cjson.decode(order_raw).claim
local outcome = ARGV[3]
if FINAL[item.status] then
  if outcome ~= 'paid' or item.status ~= 'failed' then return {item.status} end
  -- A late success under this item's own claim (a concurrent delivery was still paying when
  -- another gave up): money moved, so the item is paid, unless the external_id was claimed
  -- again since (then reconciliation reports the second payment).
  local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index', 'gen')
  if not (c[1] == 'failed' and c[2] == ARGV[2] and c[3] == idx and c[4] == ARGV[6]) then
    return {item.status}
  end
  redis.call('HINCRBY', KEYS[1], 'failed', -1)
  redis.call('HINCRBY', KEYS[1], 'processed', -1)
  redis.call('HINCRBY', '$STATS', 'failed', -1)
end
if outcome == 'paid' then
  -- The provider settled under this item's idempotency key: the money moved for this item.
  redis.call('HSET', claim_key, 'state', 'paid', 'batch_id', ARGV[2], 'index', idx,
             'e2e_id', ARGV[5], 'paid_at', ARGV[4])
  item.e2e_id = ARGV[5]
  item.failure_code = nil
  item.failure_reason = nil
else
  local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index')
  if c[1] == 'inflight' and c[2] == ARGV[2] and c[3] == idx then
    redis.call('HSET', claim_key, 'state', 'failed', 'failed_at', ARGV[4])
  end
  item.failure_code = ARGV[5]
  item.failure_reason = ARGV[6]
end
local detail = cjson.decode(ARGV[7] or '{}')
if outcome == 'paid' then detail.claim_generation = tonumber(ARGV[6]) end
finish(KEYS[1], KEYS[2], KEYS[3], idx, item, outcome, detail)
return {outcome}
