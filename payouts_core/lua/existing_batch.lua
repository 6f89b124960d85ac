-- One atomic read for create_batch: the batch's fingerprint and state (when it exists), and how
-- many of its items and orders keys exist. A batch retired to the ledger answers with the
-- fingerprint it kept: a batch_id names one payload forever.
-- KEYS: batch, items, orders, the client's retired batches. ARGV[1]: {batch_id}.
-- Reply (JSON): {fingerprint, state, others}.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3]}
local retired_batches = KEYS[4]
local head = read_fields(batch.key, {'fingerprint', 'state'})
if not head.fingerprint then
  local retired = redis.call('HGET', retired_batches, arg.batch_id)
  if retired then return cjson.encode({fingerprint = retired, state = 'completed', others = 0}) end
end
return cjson.encode({fingerprint = head.fingerprint, state = head.state,
                     others = redis.call('EXISTS', batch.items, batch.orders)})
