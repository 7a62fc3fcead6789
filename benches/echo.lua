-- POST /echo (the limit program) with the seed's request shape, 1,000 sessions.
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"user_message":"Hello!","user_name":"Alice","session_id":"bench-' .. (counter % 1000) .. '"}'
  return wrk.format("POST", "/echo", {["Content-Type"] = "application/json"}, body)
end
-- Shared wrk `done` hook: one machine-readable line with rate and latency percentiles.
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
