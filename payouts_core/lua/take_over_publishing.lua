-- Settlement.take_over_publishing (LIFECYCLE accepting -> accepting): a publisher that died
-- before opening its batch leaves it `accepting`; once its lease expired, anyone (a replay, the
-- sweeper) takes a new lease and may publish it.
-- KEYS: batch, publishing lease. ARGV[1]: {token, lease_s}. Reply: 1 taken, 0 not.
local arg = cjson.decode(ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'accepting' then return 0 end
if redis.call('SET', KEYS[2], arg.token, 'NX', 'EX', arg.lease_s) then return 1 end
return 0
