-- One attempt of a webhook delivery ends: its outcome in the delivery hash, the sweeper's due
-- set, the lease released; and a batch event's final outcome (`event`) in the batch's trail
-- (the ledger's outbox) in the same step, so a delivery is never ended without its event.
-- Applied once: only while the delivery is pending and no later attempt is recorded. A replayed
-- call (the store client retries one whose reply a Redis restart lost) or a worker ending an
-- attempt another worker ended first as final changes nothing, and records no second event.
-- KEYS: delivery, due set, lease, the event's batch (or the delivery again when no event).
-- ARGV[1]: {status, code, error, next_ms, due_ms, attempts, member, event = {type, detail}}.
-- Reply: 1 when applied, 0 when not.
local arg = cjson.decode(ARGV[1])
local delivery = read_fields(KEYS[1], {'status', 'attempts'})
redis.call('DEL', KEYS[3])
if delivery.status ~= 'pending' then return 0 end
if arg.attempts and tonumber(delivery.attempts) > arg.attempts then return 0 end
local final = arg.status ~= 'pending'
if arg.event and final and redis.call('EXISTS', KEYS[4]) == 1 then
  record_event(KEYS[4], -1, arg.event.type, arg.attempts, arg.code and tostring(arg.code),
               arg.event.detail)
end
if arg.attempts then redis.call('HSET', KEYS[1], 'attempts', arg.attempts) end
redis.call('HSET', KEYS[1], 'status', arg.status, 'last_status_code', arg.code or '',
           'last_error', arg.error, 'next_attempt_ms', arg.next_ms or '',
           'completed_ms', final and now_ms() or '')
if final then
  redis.call('ZREM', KEYS[2], arg.member)
else
  redis.call('ZADD', KEYS[2], arg.due_ms or arg.next_ms, arg.member)
end
return 1
