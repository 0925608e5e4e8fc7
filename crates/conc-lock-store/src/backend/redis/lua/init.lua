-- KEYS: marker. ARGV: (guard). Returns {epoch, after, longest, wiped}.
-- Runs after now.lua and guard.lua (`epoch`, `after`, `longest`, `wiped`); ARGV[1..3] are
-- the guard's.
return {epoch, after, longest, wiped}
