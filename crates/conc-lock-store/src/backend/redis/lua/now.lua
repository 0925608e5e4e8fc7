-- The server's clock, read once per script: `now` in ms, `now_us` in µs, and `fmt`, which
-- writes a number without an exponent. Prepended to every script.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(n) return string.format('%.0f', n) end
