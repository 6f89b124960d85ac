-- KEYS: batch, items, orders. ARGV: index, batch_id, now (ISO), now (ms), max attempts.
-- Decides what the settle task does next and takes the external_id claim atomically.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'orphan'} end
if state == 'accepting' then return {'not_ready'} end
local idx = ARGV[1]
local item_raw = redis.call('HGET', KEYS[2], idx)
if not item_raw then return {'orphan'} end
local item = cjson.decode(item_raw)
if FINAL[item.status] then return {'final', item.status} end
local order_raw = redis.call('HGET', KEYS[3], idx)
local order = cjson.decode(order_raw)

if order.wait_for then
  local w = tostring(order.wait_for)
  local prior = cjson.decode(redis.call('HGET', KEYS[2], w))
  if not FINAL[prior.status] then
    return {'wait', ARGV[2], w}
  end
  if prior.status ~= 'failed' then
    local prior_order = cjson.decode(redis.call('HGET', KEYS[3], w))
    if prior_order.terms ~= order.terms then
      reused(KEYS[1], KEYS[2], KEYS[3], idx, item, 'item ' .. w .. ' of this batch')
      return {'reused'}
    end
    if prior.status == 'paid' then
      item.duplicate_of = {batch_id=ARGV[2], index=order.wait_for, e2e_id=prior.e2e_id}
    else
      item.duplicate_of = prior.duplicate_of
    end
    finish(KEYS[1], KEYS[2], KEYS[3], idx, item, 'duplicate', {duplicate_of = item.duplicate_of})
    return {'duplicate'}
  end
end

local claim_key = order.claim
local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index', 'gen', 'e2e_id', 'terms',
                     'called_ms')
if not c[1] then
  local archived = archived_claim(claim_key)
  if archived and archived.state == 'paid' then
    if archived.tag ~= terms_tag(order.terms) then
      reused(KEYS[1], KEYS[2], KEYS[3], idx, item, 'an archived payment')
      return {'reused'}
    end
    return {'archived_duplicate', order.external_id}  -- settle asks the ledger where, then records
  end
  if archived then  -- failed: the next claim continues its generations (a new provider key)
    local bucket, field = archived_claim_ref(claim_key)
    redis.call('HDEL', bucket, field)
    c[4] = archived.gen
  end
end
local mine = (c[2] == ARGV[2] and c[3] == idx)
local where = 'batch ' .. tostring(c[2]) .. ' item ' .. tostring(c[3])
if c[1] == 'paid' then
  if mine then
    item.e2e_id = c[5]
    finish(KEYS[1], KEYS[2], KEYS[3], idx, item, 'paid', {claim_generation = tonumber(c[4]),
                                                           found = 'claim'})
    return {'final', 'paid'}
  end
  if c[6] ~= order.terms then
    reused(KEYS[1], KEYS[2], KEYS[3], idx, item, where)
    return {'reused'}
  end
  item.duplicate_of = {batch_id=c[2], index=tonumber(c[3]), e2e_id=c[5]}
  finish(KEYS[1], KEYS[2], KEYS[3], idx, item, 'duplicate', {duplicate_of = item.duplicate_of})
  return {'duplicate'}
end
if c[1] == 'inflight' and not mine then
  if c[6] ~= order.terms then
    reused(KEYS[1], KEYS[2], KEYS[3], idx, item, where)
    return {'reused'}
  end
  return {'wait', c[2], c[3]}
end
local gen = tonumber(c[4]) or 0
if c[1] ~= 'inflight' then
  gen = gen + 1
  redis.call('HSET', claim_key, 'state', 'inflight', 'batch_id', ARGV[2], 'index', idx,
             'gen', gen, 'claimed_at', ARGV[3], 'terms', order.terms)
  redis.call('HDEL', claim_key, 'called_ms')
  c[7] = false
end
local attempts = item.attempts or 0
if attempts >= tonumber(ARGV[5]) then
  -- Attempts used up: no more provider calls, only lookups of what the provider holds.
  return {'lookup', tostring(gen), order_raw, tostring(attempts), tostring(c[7] or 0)}
end
item.status = 'processing'
item.attempts = attempts + 1
local item_json = cjson.encode(item)
redis.call('HSET', KEYS[2], idx, item_json)
record_event(KEYS[1], tonumber(idx), 'provider_call', item.attempts, nil, {claim_generation = gen},
             item_json)
redis.call('HSET', claim_key, 'called_ms', ARGV[4])
return {'settle', tostring(gen), order_raw, tostring(item.attempts), ARGV[4]}
