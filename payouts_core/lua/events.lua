-- The ledger's outbox (payouts_core/ledger): every state change appends one event to the stream
-- in the same script that makes the change, so a change and its event exist together or not at
-- all. `s` is the batch's own event sequence (the ledger's key, so a replay is a no-op); the
-- batch hash's `events` field counts them, which the retention check compares with the ledger.
-- An item event carries the item's report entry as it now is (`item`), never a full PIX key.
-- $OUTBOX and $BATCH_PREFIX_LEN are filled in by store.py.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function record_event(batch_key, idx, event_type, attempt, code, detail, item_json)
  local event = {m = string.sub(batch_key, $BATCH_PREFIX_LEN + 1), i = idx, t = event_type,
                 s = redis.call('HINCRBY', batch_key, 'events', 1), at = now_ms(), a = attempt,
                 k = code, d = detail or {}}
  local encoded = cjson.encode(event)
  if item_json then encoded = string.sub(encoded, 1, -2) .. ',"item":' .. item_json .. '}' end
  redis.call('XADD', '$OUTBOX', '*', 'e', encoded)
end
