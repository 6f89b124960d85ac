-- Settlement.complete_batch (LIFECYCLE processing -> completed): once every item is final.
-- KEYS: batch, open batches, completed batches. ARGV[1]: {now, member}.
-- Reply (JSON): {result: orphan | completed | incomplete, processed, total}.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1]}
local open_batches, completed_batches = KEYS[2], KEYS[3]
local head = read_fields(batch.key, {'state', 'total', 'processed', 'successful', 'failed', 'duplicates'})
if not head.state then return cjson.encode({result = 'orphan'}) end
if head.state == 'completed' then return cjson.encode({result = 'completed'}) end
if tonumber(head.processed) < tonumber(head.total) then
  return cjson.encode({result = 'incomplete', processed = tonumber(head.processed),
                       total = tonumber(head.total)})
end
redis.call('HSET', batch.key, 'state', 'completed', 'completed_at', arg.now)
record_event(batch.key, -1, 'batch.completed', nil, nil,
             {completed_at = arg.now, processed = tonumber(head.processed),
              successful = tonumber(head.successful), failed = tonumber(head.failed),
              duplicates = tonumber(head.duplicates)})
redis.call('SREM', open_batches, arg.member)
redis.call('ZADD', completed_batches, now_ms(), arg.member)  -- retention counts from here
return cjson.encode({result = 'completed'})
