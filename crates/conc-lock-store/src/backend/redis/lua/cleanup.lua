-- KEYS: lock. Counts (1) and closes a lease that expired without a release.
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token')
if f[1] and f[1] + 0 <= now and f[2] ~= '' and string.sub(f[2], 1, 9) ~= 'released:' then
  redis.call('HSET', KEYS[1], 'token', '')
  return 1
end
return 0
