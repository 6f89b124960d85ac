-- KEYS: batch, publisher lease. ARGV: lease seconds, token. A publisher that died before opening
-- its batch leaves it `accepting`; once its lease expired, the next replay may publish it again.
if redis.call('HGET', KEYS[1], 'state') ~= 'accepting' then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return 1 end
return 0
