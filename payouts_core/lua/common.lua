-- Shared by begin_settlement and record_outcome: move an item to a final status and bump the
-- counters together. A final item no longer needs the full PIX key: its order keeps only what
-- reconciliation reads. $COUNTER, $STATS and $REUSED are filled in by store.py;
-- events.lua comes first (record_event, now_ms).
local COUNTER = $COUNTER
local FINAL = {}
for status in pairs(COUNTER) do FINAL[status] = true end
local function finish(batch_key, items_key, orders_key, idx, item, status, detail)
  item.status = status
  local item_json = cjson.encode(item)
  redis.call('HSET', items_key, idx, item_json)
  record_event(batch_key, tonumber(idx), status, item.attempts, item.failure_code, detail, item_json)
  redis.call('HINCRBY', batch_key, 'processed', 1)
  redis.call('HINCRBY', batch_key, COUNTER[status], 1)
  redis.call('HSET', batch_key, 'progress_ms', now_ms())
  redis.call('HINCRBY', '$STATS', status, 1)
  local raw = redis.call('HGET', orders_key, idx)
  if raw then
    local order = cjson.decode(raw)
    if order.pix_key then
      order.pix_key = nil
      redis.call('HSET', orders_key, idx, cjson.encode(order))
    end
  end
end
local function reused(batch_key, items_key, orders_key, idx, item, where)
  item.failure_code = '$REUSED'
  item.failure_reason = 'external_id is already held by ' .. where .. ' with other terms ' ..
    '(amount, PIX key or user_id); nothing was paid'
  finish(batch_key, items_key, orders_key, idx, item, 'failed', {held_by = where})
end
