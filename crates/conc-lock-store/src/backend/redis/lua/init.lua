-- KEYS: marker. ARGV: (guard). Returns {epoch, after, longest, wiped}.
-- Runs after now.lua and guard.lua; ARGV[1..3] are the guard's.
local epoch, after, longest, wiped = guard()
return {epoch, after, longest, wiped}
