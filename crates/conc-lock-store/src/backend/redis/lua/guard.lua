-- The restart guard, first in every script that grants or renews. KEYS[1]: the marker.
-- ARGV[1]: the marker id this instance knows ('' if none), ARGV[2]: a fresh id,
-- ARGV[3]: the delay after a wipe, ms. Sets `after` (no grant before) and `epoch`.
-- Prepended (after now.lua) to the scripts that grant or renew.
local m = redis.call('HMGET', KEYS[1], 'id', 'grant_after', 'longest')
local epoch, after, longest, wiped = m[1], tonumber(m[2] or '0'), tonumber(m[3] or '0'), 0
if not epoch then
  epoch, after, longest = ARGV[2], now, 0
  if ARGV[1] ~= '' then after = now + tonumber(ARGV[3]); wiped = 1 end
  redis.call('HSET', KEYS[1], 'id', epoch, 'grant_after', fmt(after), 'created', fmt(now), 'longest', '0')
elseif ARGV[1] ~= '' and epoch ~= ARGV[1] then
  local extended = tonumber(redis.call('HGET', KEYS[1], 'created') or now) + tonumber(ARGV[3])
  if extended > after then
    after = extended
    redis.call('HSET', KEYS[1], 'grant_after', fmt(after))
  end
  wiped = 1
end
