-- Settlement.begin_settlement (payouts_core/model.py): decide what a settle task does next for
-- one item, taking the external_id's claim when it may pay.
-- KEYS: batch, items, orders. ARGV[1]: {index, batch_id, now, now_ms, max_attempts}.
-- Reply (JSON): {action, claim_generation, attempts, called_ms, order, waiting_on}.
local arg = cjson.decode(ARGV[1])
local batch = {key = KEYS[1], items = KEYS[2], orders = KEYS[3]}
local idx = tostring(arg.index)
local function decision(action, details)
  details = details or {}
  details.action = action
  return cjson.encode(details)
end

local state = redis.call('HGET', batch.key, 'state')
if not state then return decision('orphan') end
if state == 'accepting' then return decision('not_ready') end
local item_raw = redis.call('HGET', batch.items, idx)
if not item_raw then return decision('orphan') end
local item = cjson.decode(item_raw)
if FINAL[item.status] then return decision('final') end
local order = cjson.decode(redis.call('HGET', batch.orders, idx))

-- The same external_id earlier in this batch: its outcome decides this one's.
if order.wait_for then
  local w = tostring(order.wait_for)
  local prior = cjson.decode(redis.call('HGET', batch.items, w))
  if not FINAL[prior.status] then
    return decision('wait', {waiting_on = arg.batch_id .. '#' .. w})
  end
  if prior.status ~= 'failed' then
    local prior_order = cjson.decode(redis.call('HGET', batch.orders, w))
    if not same_terms(prior_order.terms, order.terms) then
      reused(batch, idx, item, 'item ' .. w .. ' of this batch')
      return decision('reused')
    end
    if prior.status == 'paid' then
      item.duplicate_of = {batch_id = arg.batch_id, index = order.wait_for, e2e_id = prior.e2e_id}
    else
      item.duplicate_of = prior.duplicate_of
    end
    finish(batch, idx, item, 'duplicate', {duplicate_of = item.duplicate_of})
    return decision('duplicate')
  end
  -- failed earlier in the batch: no money moved, this item settles itself
end

local claim = read_claim(order.claim)
if not claim.state then
  local archived = archived_claim(order.claim)
  if archived and archived.state == 'paid' then
    if not same_terms(archived.tag, order.terms) then
      reused(batch, idx, item, 'an archived payment')
      return decision('reused')
    end
    -- settle asks the ledger where it was paid, then records the duplicate
    return decision('archived_duplicate', {order = {external_id = order.external_id}})
  end
  if archived then  -- failed: the next claim continues its generations (a new provider key)
    local bucket, field = archived_claim_ref(order.claim)
    redis.call('HDEL', bucket, field)
    claim.gen = archived.gen
  end
end

local mine = held_by(claim, arg.batch_id, idx)
if claim.state == 'paid' then
  if mine then
    item.e2e_id = claim.e2e_id
    finish(batch, idx, item, 'paid', {claim_generation = tonumber(claim.gen), found = 'claim'})
    return decision('final')
  end
  if not same_terms(claim.terms, order.terms) then
    reused(batch, idx, item, where(claim))
    return decision('reused')
  end
  item.duplicate_of = {batch_id = claim.batch_id, index = tonumber(claim.index), e2e_id = claim.e2e_id}
  finish(batch, idx, item, 'duplicate', {duplicate_of = item.duplicate_of})
  return decision('duplicate')
end
if claim.state == 'inflight' and not mine then
  if not same_terms(claim.terms, order.terms) then
    reused(batch, idx, item, where(claim))
    return decision('reused')
  end
  return decision('wait', {waiting_on = claim.batch_id .. '#' .. claim.index})
end

if claim.state ~= 'inflight' then  -- free (new, or failed: no money moved): take it
  claim.gen = (tonumber(claim.gen) or 0) + 1
  claim.called_ms = nil
  redis.call('HSET', order.claim, 'state', 'inflight', 'batch_id', arg.batch_id, 'index', idx,
             'gen', claim.gen, 'claimed_at', arg.now, 'terms', order.terms)
  redis.call('HDEL', order.claim, 'called_ms')
end
local attempts = item.attempts or 0
if attempts >= arg.max_attempts then
  -- Attempts used up: no more provider calls, only lookups of what the provider holds.
  return decision('lookup', {claim_generation = tonumber(claim.gen), order = order,
                             attempts = attempts, called_ms = tonumber(claim.called_ms) or 0})
end
item.status = 'processing'
item.attempts = attempts + 1
local item_json = cjson.encode(item)
redis.call('HSET', batch.items, idx, item_json)
record_event(batch.key, tonumber(idx), 'provider_call', item.attempts, nil,
             {claim_generation = tonumber(claim.gen)}, item_json)
redis.call('HSET', order.claim, 'called_ms', arg.now_ms)
return decision('settle', {claim_generation = tonumber(claim.gen), order = order,
                           attempts = item.attempts, called_ms = arg.now_ms})
