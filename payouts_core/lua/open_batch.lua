-- KEYS: batch, publisher lease. ARGV: publisher token, now (ms).
-- Opens the batch for the publisher holding its lease (or finding it expired, nobody having taken
-- it over), or for that same publisher again (its redelivery after a crash mid-publish). Any other
-- publisher is refused: one chord per batch even when a publish message outlives its lease and a
-- replay or the sweeper took the batch over meanwhile. 1 = publish the chord, 0 = leave it.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or redis.call('HEXISTS', KEYS[1], 'published') == 1 then return 0 end
if state == 'accepting' then
  local holder = redis.call('GET', KEYS[2])
  if holder and holder ~= ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'processing', 'publisher', ARGV[1], 'progress_ms', ARGV[2])
  redis.call('DEL', KEYS[2])
  record_event(KEYS[1], -1, 'batch.published', nil, nil, {})
  return 1
end
if redis.call('HGET', KEYS[1], 'publisher') == ARGV[1] then return 1 end
return 0
