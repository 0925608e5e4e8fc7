-- KEYS: marker, lock. ARGV: (guard), owner, token, metadata entries (n), ttl, the hash's
-- lifetime (ttl plus the grace period), force (`1` takes the key whoever holds it), the
-- longest lease this instance knows the marker to record ('0' if it does not know), then
-- n name/value pairs, each stored as the hash field `m:<name>`.
-- The restart guard is read only for a key with no lock hash, or a lease longer than the
-- caller knows the marker records: a wipe (a restart without persistence, a flush, a
-- failover to an empty replica) takes every lock hash with it, so a key whose hash exists
-- keeps its own history (holder, expiry, fence) and needs no guard. A lease longer than any
-- before is recorded in the marker and published (`\0longest:<ms>`), so every instance knows
-- how long to wait after a wipe.
-- Returns, with the guard read, {status, epoch, after, longest, wiped, fence, acquired,
-- expires}; without it, {status + 3, fence, acquired, expires}. The numbers are integers
-- (a Lua number becomes an integer reply exactly below 2^53: fences are µs, about 2^51
-- today); status 1 granted, 0 held, 2 recovering.
-- Runs after now.lua and guard.lua; ARGV[1..3] are the guard's.
local f = redis.call('HMGET', KEYS[2], 'expires_at', 'fence', 'token', 'waiting_until', 'mn')
local ttl = ARGV[7] + 0
local epoch, after, longest, wiped
if not f[2] or ttl > ARGV[10] + 0 then
  epoch, after, longest, wiped = guard()
  if after > now then return {2, epoch, after, longest, wiped} end
end
local live = f[1] and f[3] ~= '' and f[1] + 0 > now
-- A retry after a lost connection finds its own token: it takes its lease again.
local own = f[3] == ARGV[5]
if ARGV[9] ~= '1' and live and not own then
  if epoch then return {0, epoch, after, longest, wiped} end
  return {3}
end
local fence = now_us
if f[2] then
  local next = f[2] + 1
  if next > fence then fence = next end
end
local expires = now + ttl
-- The last holder's metadata goes: the hash is deleted when it had `m:` fields (`mn`, their
-- count, is not 0) or was written by an earlier version (no `mn`); otherwise the fields
-- below overwrite it in place, which saves Redis a deletion and a new hash per acquire.
if f[2] and f[5] ~= '0' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'owner', ARGV[4], 'token', ARGV[5], 'fence', fmt(fence),
  'acquired_at', fmt(now), 'expires_at', fmt(expires), 'mn', ARGV[6])
for i = 11, #ARGV, 2 do
  redis.call('HSET', KEYS[2], 'm:' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
-- Waiters announced on the key wait on for the next holder's release too.
if f[4] and f[4] + 0 > now then redis.call('HSET', KEYS[2], 'waiting_until', f[4]) end
if live and not own then
  redis.call('PUBLISH', channel(), string.match(KEYS[2], '^[^{]*lock:{(.*)}$'))
end
if epoch then
  longest = raise(ttl, longest)
  return {1, epoch, after, longest, wiped, fence, now, expires}
end
return {4, fence, now, expires}
