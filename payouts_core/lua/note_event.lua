-- KEYS: batch. ARGV: index (-1 for the batch), type, attempt or '', code or '', detail (JSON).
-- An event that changes no stored state (a provider error before a retry, a lookup's answer, a
-- webhook delivered): recorded in the batch's sequence, or nothing for a batch that is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
record_event(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4] ~= '' and ARGV[4] or nil,
             cjson.decode(ARGV[5]))
return 1
