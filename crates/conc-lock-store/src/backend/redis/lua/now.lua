-- The server's clock, read once per script: `now` in ms, `now_us` in µs, and `fmt`, which
-- writes an integer in full ('%d': never an exponent, and unlike '%.0f' no float
-- formatting, which cost a third of a microsecond a call). Prepended to every script.
-- Numbers are read from strings by arithmetic (`s + 0`), one conversion, where
-- `tonumber(s)` converts twice (it checks, then converts).
local t = redis.call('TIME')
local now_us = t[1] * 1000000 + t[2]
local now = (now_us - now_us % 1000) / 1000
local format = string.format
local function fmt(n) return format('%d', n) end
