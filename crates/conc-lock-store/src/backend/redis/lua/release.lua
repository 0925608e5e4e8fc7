-- KEYS: lock. ARGV: key, token, grace, events channel, retry (`1` on a retry after a lost
-- connection: a lease this token already released counts as released). A released lease
-- keeps its token, marked `released:`, for the grace period. Other processes are told
-- only while one has announced a wait (`waiting_until` ahead, see `ANNOUNCE`).
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'waiting_until')
if ARGV[5] == '1' and f[1] == 'released:' .. ARGV[2] then return 1 end
if f[1] == ARGV[2] and f[1] ~= '' and tonumber(f[2]) > now then
  redis.call('HSET', KEYS[1], 'token', 'released:' .. ARGV[2], 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  if f[3] and tonumber(f[3]) > now then redis.call('PUBLISH', ARGV[4], ARGV[1]) end
  return 1
end
return 0
