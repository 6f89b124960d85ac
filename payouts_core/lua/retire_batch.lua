-- KEYS: batch, items, orders, publisher lease, all batches, the client's history, completed
-- batches. ARGV: events the ledger was checked to hold, batch member, encoded batch_id.
-- Deletes a completed batch from Redis once the ledger holds all of it (reads then come from
-- the ledger); refused (0) when the batch changed since the check.
local b = redis.call('HMGET', KEYS[1], 'state', 'events')
if b[1] ~= 'completed' or b[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[3])
redis.call('ZREM', KEYS[7], ARGV[2])
return 1
