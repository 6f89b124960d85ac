-- Shared by every script, after the constants store.py generates from the Python rules
-- (LUA_CONSTANTS). Names follow payouts_core/model.py: a claim is read into a table by field
-- name (claim.state, claim.batch_id, ...), and `finish` / `reused` are the model's own steps.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Some fields of a hash as a table by field name (a missing field is nil).
local function read_fields(key, names)
  local values = redis.call('HMGET', key, unpack(names))
  local t = {}
  for i, name in ipairs(names) do
    if values[i] then t[name] = values[i] end
  end
  return t
end

-- A claim (model.Claim) by field name; {} when the external_id was never claimed.
-- The item and its order at `idx`, decoded; nil when either is gone (an orphan).
local function read_item(batch, idx)
  local item_raw = redis.call('HGET', batch.items, idx)
  local order_raw = redis.call('HGET', batch.orders, idx)
  if not item_raw or not order_raw then return nil end
  return cjson.decode(item_raw), cjson.decode(order_raw)
end
local function read_claim(claim_key)
  return read_fields(claim_key, {'state', 'batch_id', 'index', 'gen', 'terms', 'e2e_id', 'called_ms'})
end

local function held_by(claim, batch_id, idx)
  return claim.batch_id == batch_id and claim.index == idx
end

local function where(claim)
  return 'batch ' .. tostring(claim.batch_id) .. ' item ' .. tostring(claim.index)
end

-- rules.same_terms: `held` is a full terms digest or an archived claim's tag (a prefix of it).
local function same_terms(held, terms)
  return string.sub(terms, 1, #held) == held
end

-- The ledger's outbox (payouts_core/ledger): every state change appends one event to the stream
-- in the same script that makes the change, so a change and its event exist together or not at
-- all. `s` is the batch's own event sequence (the ledger's key, so a replay is a no-op); the
-- batch hash's `events` field counts them, which the retention check compares with the ledger.
-- An item event carries the item's report entry as it now is (`item`), never a full PIX key.
local function record_event(batch_key, idx, event_type, attempt, code, detail, item_json)
  local event = {m = string.sub(batch_key, BATCH_PREFIX_LEN + 1), i = idx, t = event_type,
                 s = redis.call('HINCRBY', batch_key, 'events', 1), at = now_ms(), a = attempt,
                 k = code, d = detail or {}}
  local encoded = cjson.encode(event)
  if item_json then encoded = string.sub(encoded, 1, -2) .. ',"item":' .. item_json .. '}' end
  redis.call('XADD', OUTBOX, '*', 'e', encoded)
end

-- Move an item to a final status and count it; its order forgets the full PIX key (a final
-- item keeps only what reconciliation reads). `batch` holds the batch's keys.
local function finish(batch, idx, item, status, detail)
  item.status = status
  local item_json = cjson.encode(item)
  redis.call('HSET', batch.items, idx, item_json)
  record_event(batch.key, tonumber(idx), status, item.attempts, item.failure_code, detail, item_json)
  redis.call('HINCRBY', batch.key, 'processed', 1)
  redis.call('HINCRBY', batch.key, COUNTER[status], 1)
  redis.call('HSET', batch.key, 'progress_ms', now_ms())
  redis.call('HINCRBY', STATS, status, 1)
  local raw = redis.call('HGET', batch.orders, idx)
  if raw then
    local order = cjson.decode(raw)
    if order.pix_key then
      order.pix_key = nil
      redis.call('HSET', batch.orders, idx, cjson.encode(order))
    end
  end
end

-- The external_id is held with other terms: failed, nothing paid.
local function reused(batch, idx, item, held_where)
  item.failure_code = EXTERNAL_ID_REUSED
  item.failure_reason = string.format(REUSE_REASON, held_where)
  finish(batch, idx, item, 'failed', {held_by = held_where})
end

-- Archived claims: once the ledger holds a retired batch, each final claim it held shrinks to
-- one field of a per-client bucket hash (~30 bytes in a listpack instead of a ~250-byte hash):
-- bucket = the first 12 bits of SHA-1(claim key) (4,096 per client; Redis keeps a bucket a
-- listpack up to hash-max-listpack-entries, 4096 in our configuration, so 16 M ids per client),
-- field = the next 96 bits (raw: two ids of one client collide with odds ~n^2 / 2^97), value = state
-- (p paid, f failed), the claim generation, then 8 raw bytes of the terms digest. Paid stays a
-- duplicate or a reuse forever (SPEC §5); failed keeps its generation, so a new claim gets a
-- new idempotency key.
local function hex_to_raw(hex)
  return (string.gsub(hex, '..', function(x) return string.char(tonumber(x, 16)) end))
end
local function raw_to_hex(raw)
  return (string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local function archived_claim_ref(claim_key)
  local client = string.match(claim_key, '^' .. CLAIM_PREFIX .. '([^:]*):')
  local h = redis.sha1hex(claim_key)
  return ARCHIVED_CLAIMS .. client .. ':' .. string.sub(h, 1, 3), hex_to_raw(string.sub(h, 4, 27))
end
local function archived_value(claim)
  return string.sub(claim.state, 1, 1) .. claim.gen .. hex_to_raw(string.sub(claim.terms, 1, TERMS_TAG_HEX))
end
-- {state, gen, tag (hex: the terms digest's first TERMS_TAG_HEX digits)} or nil.
local function archived_claim(claim_key)
  local key, field = archived_claim_ref(claim_key)
  local v = redis.call('HGET', key, field)
  if not v then return nil end
  local state, gen = string.match(string.sub(v, 1, -9), '^(%a)(%d+)$')
  return {state = (state == 'p') and 'paid' or 'failed', gen = tonumber(gen),
          tag = raw_to_hex(string.sub(v, -8))}
end
