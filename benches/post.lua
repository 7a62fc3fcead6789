-- POST the seed's request shape to POST_PATH (default /chat) over 1,000 sessions
-- (post-0 … post-999: apart from the bench-N sessions other scripts fill and read).
local path = os.getenv("POST_PATH") or "/chat"
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"user_message":"Hello!","user_name":"Alice","session_id":"post-' .. (counter % 1000) .. '"}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
dofile("benches/report.lua")
