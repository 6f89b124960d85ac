-- KEYS: batch, open-batches set, completed batches. ARGV: now, batch member.
-- Completes the batch once every item is final.
local b = redis.call('HMGET', KEYS[1], 'state', 'processed', 'total')
if not b[1] then return {'orphan'} end
if b[1] == 'completed' then return {'completed'} end
if tonumber(b[2]) < tonumber(b[3]) then return {'incomplete', b[2], b[3]} end
redis.call('HSET', KEYS[1], 'state', 'completed', 'completed_at', ARGV[1])
local c = redis.call('HMGET', KEYS[1], 'processed', 'successful', 'failed', 'duplicates')
record_event(KEYS[1], -1, 'batch.completed', nil, nil,
             {completed_at = ARGV[1], processed = tonumber(c[1]), successful = tonumber(c[2]),
              failed = tonumber(c[3]), duplicates = tonumber(c[4])})
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], now_ms(), ARGV[2])  -- retention counts from here
return {'completed'}
