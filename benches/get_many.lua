-- GETs the histories of bench-0 … bench-(SESSIONS-1) in turn (default 1,000),
-- so that a cache smaller than all of them misses on every request (LRU on a
-- cycle longer than it holds). STOP_AFTER ends the run after that many answers.
local sessions = tonumber(os.getenv("SESSIONS") or "1000")
local stop_after = tonumber(os.getenv("STOP_AFTER") or "0")
local n, answered = 0, 0
request = function()
  n = n + 1
  return wrk.format("GET", "/chat/history/bench-" .. (n % sessions))
end
response = function()
  answered = answered + 1
  if stop_after > 0 and answered >= stop_after then wrk.thread:stop() end
end
dofile("benches/report.lua")
