-- KEYS: lock. ARGV: key, grace, events channel.
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token')
if f[1] and f[2] ~= '' and f[1] + 0 > now then
  redis.call('HSET', KEYS[1], 'token', '', 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return 1
end
return 0
