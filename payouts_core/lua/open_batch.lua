-- Settlement.open_batch (payouts_core/model.py, LIFECYCLE accepting -> processing): open the batch
-- for the publisher holding its lease (or finding it expired, nobody having taken it over), or
-- for that same publisher again (its redelivery after a crash mid-publish). Any other publisher is
-- refused: one chord per batch even when a publish message outlives its lease and a replay or the
-- sweeper took the batch over meanwhile.
-- KEYS: batch, publishing lease. ARGV[1]: {publisher, now_ms}. Reply: 1 publish the chord, 0 leave it.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], lease = KEYS[2]}
local head = read_fields(batch.key, {'state', 'published', 'publisher'})
if not head.state or head.published then return 0 end
if head.state == 'accepting' then
  local holder = redis.call('GET', batch.lease)
  if holder and holder ~= arg.publisher then return 0 end
  redis.call('HSET', batch.key, 'state', 'processing', 'publisher', arg.publisher,
             'progress_ms', arg.now_ms)
  redis.call('DEL', batch.lease)
  record_event(batch.key, -1, 'batch.published', nil, nil, {})
  return 1
end
if head.publisher == arg.publisher then return 1 end
return 0
