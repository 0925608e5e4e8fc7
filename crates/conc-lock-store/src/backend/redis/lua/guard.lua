-- The restart guard: `guard()` reads (and if need be writes) the marker. KEYS[1]: the
-- marker. ARGV[1]: the marker id this instance knows ('' if none), ARGV[2]: a fresh id,
-- ARGV[3]: the delay after a wipe, ms. Returns `epoch`, `after` (no grant before),
-- `longest` and `wiped`. A wipe found, or a wait lengthened, is published
-- (`\0after:<ms>`): an instance that hears it reads the guard on every grant until then.
-- Prepended (after now.lua) to the scripts that grant or renew.
-- The events channel is `<prefix>events`; the marker's key is `<prefix>epoch` (on a
-- cluster `<prefix>epoch:{<tag>}`) and a prefix holds no brace.
local function channel() return string.match(KEYS[1], '^([^{]*)epoch') .. 'events' end
local function guard()
  local m = redis.call('HMGET', KEYS[1], 'id', 'grant_after', 'longest')
  local epoch, after, longest, wiped = m[1], (m[2] or 0) + 0, (m[3] or 0) + 0, 0
  if not epoch then
    epoch, after, longest = ARGV[2], now, 0
    if ARGV[1] ~= '' then after = now + ARGV[3]; wiped = 1 end
    redis.call('HSET', KEYS[1], 'id', epoch, 'grant_after', fmt(after), 'created', fmt(now), 'longest', '0')
    if wiped == 1 then redis.call('PUBLISH', channel(), '\0after:' .. fmt(after)) end
  elseif ARGV[1] ~= '' and epoch ~= ARGV[1] then
    local extended = (redis.call('HGET', KEYS[1], 'created') or now) + ARGV[3]
    if extended > after then
      after = extended
      redis.call('HSET', KEYS[1], 'grant_after', fmt(after))
      redis.call('PUBLISH', channel(), '\0after:' .. fmt(after))
    end
    wiped = 1
  end
  return epoch, after, longest, wiped
end
-- Raises the marker's longest lease to `ttl` (and tells every instance) if it is longer.
local function raise(ttl, longest)
  if ttl <= longest then return longest end
  redis.call('HSET', KEYS[1], 'longest', fmt(ttl))
  redis.call('PUBLISH', channel(), '\0longest:' .. fmt(ttl))
  return ttl
end
