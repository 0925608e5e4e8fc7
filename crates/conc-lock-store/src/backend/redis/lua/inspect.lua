-- KEYS: lock. Returns {owner, metadata written by earlier versions (JSON or ''), fence,
-- acquired, expires, then the `m:` fields' names (prefix stripped) and values}, or false.
-- Runs after now.lua.
local f = redis.call('HMGET', KEYS[1], 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at', 'token')
if not (f[5] and f[6] ~= '' and f[5] + 0 > now) then return false end
local out = {f[1], f[2] or '', f[3], f[4], f[5]}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'm:' then
    out[#out + 1] = string.sub(all[i], 3)
    out[#out + 1] = all[i + 1]
  end
end
return out
