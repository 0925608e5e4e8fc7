-- The server's clock, read once per script: `now` in ms, `now_us` in µs, and `fmt`, which
-- writes an integer in full ('%d': never an exponent, and unlike '%.0f' no float
-- formatting, which cost a third of a microsecond a call). Prepended to every script.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local function fmt(n) return string.format('%d', n) end
