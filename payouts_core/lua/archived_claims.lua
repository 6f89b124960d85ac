-- Archived claims: once the ledger holds a retired batch, each final claim it held shrinks to
-- one field of a per-client bucket hash (~30 bytes in a listpack instead of a ~250-byte hash):
-- bucket = the first 12 bits of SHA-1(claim key) (4,096 per client; Redis keeps a bucket a
-- listpack up to hash-max-listpack-entries, 4096 in our configuration, so 16 M ids per client),
-- field = the next 96 bits (raw: two ids of one client collide with odds ~n^2 / 2^97), value = state
-- (p paid, f failed), the claim generation, then 8 raw bytes of the terms digest. Paid stays a
-- duplicate or a reuse forever (SPEC §5); failed keeps its generation, so a new claim gets a
-- new idempotency key. $CLAIM_PREFIX and $ARCHIVED_CLAIMS are filled in by store.py.
local function hex_to_raw(hex)
  return (string.gsub(hex, '..', function(x) return string.char(tonumber(x, 16)) end))
end
local function raw_to_hex(raw)
  return (string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local function archived_claim_ref(claim_key)
  local client = string.match(claim_key, '^$CLAIM_PREFIX([^:]*):')
  local h = redis.sha1hex(claim_key)
  return '$ARCHIVED_CLAIMS' .. client .. ':' .. string.sub(h, 1, 3), hex_to_raw(string.sub(h, 4, 27))
end
local function terms_tag(terms)
  return hex_to_raw(string.sub(terms, 1, 16))
end
-- {state, gen, tag} of the archived claim under this claim key, or nil.
local function archived_claim(claim_key)
  local key, field = archived_claim_ref(claim_key)
  local v = redis.call('HGET', key, field)
  if not v then return nil end
  local state, gen = string.match(string.sub(v, 1, -9), '^(%a)(%d+)$')
  return {state = (state == 'p') and 'paid' or 'failed', gen = tonumber(gen),
          tag = string.sub(v, -8)}
end
