-- KEYS: lock. ARGV: how long the caller waits, ms. Records the wait (`waiting_until`) on a
-- live lease, atomically with respect to a release (scripts run one at a time): either
-- the release comes after and sees it, or this sees the key free. Returns 1 if the key is
-- held, 0 if not.
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token', 'waiting_until')
if not (f[1] and f[2] and f[2] ~= '' and string.sub(f[2], 1, 9) ~= 'released:'
    and f[1] + 0 > now) then return 0 end
local wait_until = now + ARGV[1]
if not f[3] or f[3] + 0 < wait_until then
  redis.call('HSET', KEYS[1], 'waiting_until', fmt(wait_until))
end
return 1
