-- KEYS: batch, items, orders. One atomic read: (fingerprint, state, how many of items/orders exist).
return {redis.call('HGET', KEYS[1], 'fingerprint'), redis.call('HGET', KEYS[1], 'state'),
        redis.call('EXISTS', KEYS[2], KEYS[3])}
