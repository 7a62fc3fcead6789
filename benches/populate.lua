-- POSTs to SESSION (or over 1,000 sessions when SESSION is empty) and stops
-- after COUNT answers. Used by run.sh to fill histories before reading them.
local session = os.getenv("SESSION") or ""
local count = tonumber(os.getenv("COUNT") or "100")
local path = os.getenv("POST_PATH") or "/chat"
local sent, answered = 0, 0
request = function()
  sent = sent + 1
  local id = session ~= "" and session or ("bench-" .. (sent % 1000))
  local body = '{"user_message":"Hello!","user_name":"Alice","session_id":"' .. id .. '"}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
response = function()
  answered = answered + 1
  if answered >= count then wrk.thread:stop() end
end
