-- KEYS: lock. ARGV: key, token, grace, events channel, retry (`1` on a retry after a lost
-- connection: a lease this token already released counts as released). A released lease
-- keeps its token, marked `released:`, for at least the grace period: its hash keeps the
-- expiry its grant or last renewal gave it (the lease's end plus the grace period) unless
-- that is more than two grace periods away, so a release of a short lease writes two
-- fields and nothing else, and a released long lease does not hold memory for hours.
-- Other processes are told only while one has announced a wait (`waiting_until` ahead,
-- see `ANNOUNCE`).
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'waiting_until')
if ARGV[5] == '1' and f[1] == 'released:' .. ARGV[2] then return 1 end
if f[1] == ARGV[2] and f[1] ~= '' and tonumber(f[2]) > now then
  redis.call('HSET', KEYS[1], 'token', 'released:' .. ARGV[2], 'expires_at', fmt(now))
  local grace = tonumber(ARGV[3])
  if tonumber(f[2]) - now > grace then redis.call('PEXPIRE', KEYS[1], grace) end
  if f[3] and tonumber(f[3]) > now then redis.call('PUBLISH', ARGV[4], ARGV[1]) end
  return 1
end
return 0
