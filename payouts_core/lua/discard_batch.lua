-- KEYS: batch, items, orders, lease, all batches, open batches, the client's history.
-- ARGV: token, batch member, encoded batch_id.
-- Deletes a batch whose publishing failed, only while its publisher still holds the lease: once
-- another process took the batch over and published it, its settle tasks may be paying.
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'accepting' then return 0 end
-- The ledger forgets the batch too (nothing of it was paid): the client may post it again.
record_event(KEYS[1], -1, 'batch.discarded', nil, nil, {})
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('SREM', KEYS[6], ARGV[2])
redis.call('ZREM', KEYS[7], ARGV[3])
return 1
