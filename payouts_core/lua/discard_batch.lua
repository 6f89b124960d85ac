-- Settlement.discard_batch (LIFECYCLE accepting -> gone): delete a batch whose publishing failed,
-- only while its publisher still holds the lease: once another process took the batch over and
-- published it, its settle tasks may be paying.
-- KEYS: batch, items, orders, publishing lease, all batches, open batches, the client's history.
-- ARGV[1]: {lease, member, encoded_batch_id}. Reply: 1 discarded, 0 refused.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3], lease = KEYS[4]}
local all_batches, open_batches, client_history = KEYS[5], KEYS[6], KEYS[7]
if redis.call('GET', batch.lease) ~= arg.lease then return 0 end
if redis.call('HGET', batch.key, 'state') ~= 'accepting' then return 0 end
-- The ledger forgets the batch too (nothing of it was paid): the client may post it again.
record_event(batch.key, -1, 'batch.discarded', nil, nil, {})
redis.call('DEL', batch.key, batch.items, batch.orders, batch.lease)
redis.call('ZREM', all_batches, arg.member)
redis.call('SREM', open_batches, arg.member)
redis.call('ZREM', client_history, arg.encoded_batch_id)
return 1
