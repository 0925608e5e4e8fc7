-- KEYS: marker, lock. ARGV: (guard), key, owner, token, metadata entries (n), ttl, grace,
-- force (`1` takes the key whoever holds it), events channel, then n name/value pairs, each
-- stored as the hash field `m:<name>`. A lease longer than any before is
-- published (`\0longest:<ms>`), so every instance knows how long to wait after a wipe.
-- Returns {status, epoch, after, longest, wiped, fence, acquired, expires}, the numbers as
-- integers (a Lua number becomes an integer reply exactly below 2^53: fences are µs, about
-- 2^51 today); status 1 granted, 0 held, 2 recovering.
-- Runs after now.lua and guard.lua (`epoch`, `after`, `longest`, `wiped`); ARGV[1..3] are
-- the guard's.
if after > now then return {2, epoch, after, longest, wiped} end
local f = redis.call('HMGET', KEYS[2], 'expires_at', 'fence', 'token', 'waiting_until', 'mn')
local live = f[1] and f[3] ~= '' and tonumber(f[1]) > now
-- A retry after a lost connection finds its own token: it takes its lease again.
local own = f[3] == ARGV[6]
if ARGV[10] ~= '1' and live and not own then return {0, epoch, after, longest, wiped} end
local fence = now_us
if f[2] and tonumber(f[2]) + 1 > fence then fence = tonumber(f[2]) + 1 end
local ttl = tonumber(ARGV[8])
local expires = now + ttl
-- The last holder's metadata goes: the hash is deleted when it had `m:` fields (`mn`, their
-- count, is not 0) or was written by an earlier version (no `mn`); otherwise the fields
-- below overwrite it in place, which saves Redis a deletion and a new hash per acquire.
if f[2] and f[5] ~= '0' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'token', ARGV[6], 'fence', fmt(fence),
  'acquired_at', fmt(now), 'expires_at', fmt(expires), 'mn', ARGV[7])
for i = 0, (tonumber(ARGV[7]) or 0) - 1 do
  redis.call('HSET', KEYS[2], 'm:' .. ARGV[12 + 2 * i], ARGV[13 + 2 * i])
end
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[9]))
-- Waiters announced on the key wait on for the next holder's release too.
if f[4] and tonumber(f[4]) > now then redis.call('HSET', KEYS[2], 'waiting_until', f[4]) end
if ttl > longest then
  redis.call('HSET', KEYS[1], 'longest', fmt(ttl)); longest = ttl
  redis.call('PUBLISH', ARGV[11], '\0longest:' .. fmt(ttl))
end
if live and not own then redis.call('PUBLISH', ARGV[11], ARGV[4]) end
return {1, epoch, after, longest, wiped, fence, now, expires}
