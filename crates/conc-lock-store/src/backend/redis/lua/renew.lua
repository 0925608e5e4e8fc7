-- KEYS: marker, lock. ARGV: (guard), key, token, ttl, grace, events channel.
-- Returns {epoch, after, longest, wiped, expires or false}.
-- Runs after now.lua and guard.lua (`epoch`, `after`, `longest`, `wiped`); ARGV[1..3] are
-- the guard's.
local f = redis.call('HMGET', KEYS[2], 'token', 'expires_at')
if f[1] == ARGV[5] and f[1] ~= '' and tonumber(f[2]) > now then
  local ttl = tonumber(ARGV[6])
  local expires = now + ttl
  redis.call('HSET', KEYS[2], 'expires_at', fmt(expires))
  redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[7]))
  if ttl > longest then
    redis.call('HSET', KEYS[1], 'longest', fmt(ttl)); longest = ttl
    redis.call('PUBLISH', ARGV[8], '\0longest:' .. fmt(ttl))
  end
  return {epoch, after, longest, wiped, expires}
end
return {epoch, after, longest, wiped, false}
