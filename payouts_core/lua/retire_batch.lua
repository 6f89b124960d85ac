-- Settlement.retire, second part: delete a completed batch from Redis once the ledger holds all
-- of it (reads then come from the ledger), keeping its fingerprint so the batch_id still names
-- that one payload (a POST of it again is a replay or a 409, never a new batch).
-- KEYS: batch, items, orders, publishing lease, all batches, the client's history, completed
-- batches, the client's retired batches.
-- ARGV[1]: {events (the ledger was checked to hold), member, encoded_batch_id, batch_id}.
-- Reply: 1 retired, 0 refused (the batch changed since the check).
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3], lease = KEYS[4]}
local all_batches, client_history, completed_batches, retired_batches = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local head = read_fields(batch.key, {'state', 'events', 'fingerprint'})
if head.state ~= 'completed' or tonumber(head.events) ~= arg.events then return 0 end
redis.call('HSET', retired_batches, arg.batch_id, head.fingerprint)
redis.call('DEL', batch.key, batch.items, batch.orders, batch.lease)
redis.call('ZREM', all_batches, arg.member)
redis.call('ZREM', client_history, arg.encoded_batch_id)
redis.call('ZREM', completed_batches, arg.member)
return 1
