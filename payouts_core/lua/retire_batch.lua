-- KEYS: batch, items, orders, publisher lease, all batches, the client's history, completed
-- batches, the client's retired batches. ARGV: events the ledger was checked to hold, batch
-- member, encoded batch_id, batch_id.
-- Deletes a completed batch from Redis once the ledger holds all of it (reads then come from
-- the ledger), keeping its fingerprint so the batch_id still names that one payload (a POST of
-- it again is a replay or a 409, never a new batch); refused (0) when the batch changed since
-- the check.
local b = redis.call('HMGET', KEYS[1], 'state', 'events', 'fingerprint')
if b[1] ~= 'completed' or b[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[8], ARGV[4], b[3])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[3])
redis.call('ZREM', KEYS[7], ARGV[2])
return 1
