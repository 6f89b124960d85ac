-- KEYS: emitted marker, the client's endpoints, event, due deliveries.
-- ARGV: event id, event type, body, now ms, due score ms, retention s, delivery key prefix,
--       delivery log prefix, due member prefix, then one fresh delivery id per possible endpoint.
-- Emits an event once per fact (the marker): the event and one pending delivery per subscribed
-- endpoint are written together, so a crash leaves either nothing or everything to deliver.
-- Returns {created (0/1), event id, delivery ids...}; a repeat returns the first emission's.
local existing = redis.call('GET', KEYS[1])
if existing then
  local event_key = string.sub(KEYS[3], 1, #KEYS[3] - #ARGV[1]) .. existing
  local ids = redis.call('HGET', event_key, 'deliveries') or ''
  local reply = {0, existing}
  for id in string.gmatch(ids, '[^,]+') do reply[#reply + 1] = id end
  return reply
end
local ttl = tonumber(ARGV[6])
local reply, ids = {1, ARGV[1]}, {}
local endpoints = redis.call('HGETALL', KEYS[2])
for i = 1, #endpoints, 2 do
  local endpoint = cjson.decode(endpoints[i + 1])
  for _, event_type in ipairs(endpoint.events) do
    if event_type == ARGV[2] then
      local id = ARGV[9 + #ids + 1]
      ids[#ids + 1] = id
      reply[#reply + 1] = id
      redis.call('HSET', ARGV[7] .. id, 'id', id, 'endpoint_id', endpoint.id, 'event_id', ARGV[1],
        'event_type', ARGV[2], 'status', 'pending', 'attempts', 0, 'created_ms', ARGV[4],
        'window_start_ms', ARGV[4], 'next_attempt_ms', ARGV[4], 'last_status_code', '',
        'last_error', '', 'completed_ms', '')
      redis.call('EXPIRE', ARGV[7] .. id, ttl)
      redis.call('ZADD', ARGV[8] .. endpoint.id, ARGV[4], id)
      redis.call('ZADD', KEYS[4], ARGV[5], ARGV[9] .. id)
      break
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('HSET', KEYS[3], 'type', ARGV[2], 'body', ARGV[3], 'deliveries', table.concat(ids, ','))
redis.call('EXPIRE', KEYS[3], ttl)
return reply
