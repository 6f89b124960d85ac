-- KEYS: batch, items, orders, the client's retired batches. ARGV: batch_id.
-- One atomic read: (fingerprint, state, how many of items/orders exist). A batch retired to the
-- ledger answers with the fingerprint it kept: a batch_id names one payload forever.
local found = redis.call('HGET', KEYS[1], 'fingerprint')
if not found then
  local retired = redis.call('HGET', KEYS[4], ARGV[1])
  if retired then return {retired, 'completed', 0} end
end
return {found, redis.call('HGET', KEYS[1], 'state'), redis.call('EXISTS', KEYS[2], KEYS[3])}
