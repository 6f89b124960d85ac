-- An event that changes no stored state (a provider error before a retry, a lookup's answer, a
-- webhook delivered): recorded in the batch's sequence, or nothing for a batch that is gone.
-- KEYS: batch. ARGV[1]: {index (-1 for the batch), type, attempt, code, detail}. Reply: 1 or 0.
local arg = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
record_event(KEYS[1], arg.index, arg.type, arg.attempt, arg.code, arg.detail)
return 1
