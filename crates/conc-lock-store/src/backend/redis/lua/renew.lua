-- KEYS: marker, lock. ARGV: (guard), token, ttl, the hash's lifetime (ttl plus the grace
-- period). Returns {epoch, after, longest, wiped, expires or false}.
-- Runs after now.lua and guard.lua; ARGV[1..3] are the guard's. A renewal always reads the
-- guard: it is how a holder learns that the store lost its state.
local epoch, after, longest, wiped = guard()
local f = redis.call('HMGET', KEYS[2], 'token', 'expires_at')
if f[1] == ARGV[4] and f[1] ~= '' and f[2] + 0 > now then
  local ttl = ARGV[5] + 0
  local expires = now + ttl
  redis.call('HSET', KEYS[2], 'expires_at', fmt(expires))
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  longest = raise(ttl, longest)
  return {epoch, after, longest, wiped, expires}
end
return {epoch, after, longest, wiped, false}
