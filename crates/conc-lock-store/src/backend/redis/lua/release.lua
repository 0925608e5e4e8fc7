-- KEYS: lock. ARGV: token, grace (ms), retry (`1` on a retry after a lost connection: a
-- lease this token already released counts as released). A released lease keeps its
-- token, marked `released:`, for at least the grace period: its hash keeps the expiry its
-- grant or last renewal gave it (the lease's end plus the grace period) unless that is more
-- than two grace periods away, so a release of a short lease writes two fields and nothing
-- else, and a released long lease does not hold memory for hours.
-- Other processes are told (the key, on `<prefix>events`) only while one has announced a
-- wait (`waiting_until` ahead, see `ANNOUNCE`). The lock's key is `<prefix>lock:{<key>}`
-- and a prefix holds no brace.
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'waiting_until')
if ARGV[3] == '1' and f[1] == 'released:' .. ARGV[1] then return 1 end
if f[1] ~= ARGV[1] or f[1] == '' then return 0 end
local ends = f[2] + 0
if ends <= now then return 0 end
redis.call('HSET', KEYS[1], 'token', 'released:' .. ARGV[1], 'expires_at', fmt(now))
if ends - now > ARGV[2] + 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if f[3] and f[3] + 0 > now then
  local prefix, key = string.match(KEYS[1], '^([^{]*)lock:{(.*)}$')
  redis.call('PUBLISH', prefix .. 'events', key)
end
return 1
