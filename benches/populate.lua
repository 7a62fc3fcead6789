-- POSTs to SESSION (or over SESSIONS sessions, default 1,000, when SESSION is
-- empty) and stops after COUNT answers. Used to fill histories before reading them.
local session = os.getenv("SESSION") or ""
local sessions = tonumber(os.getenv("SESSIONS") or "1000")
local count = tonumber(os.getenv("COUNT") or "100")
local path = os.getenv("POST_PATH") or "/chat"
local sent, answered = 0, 0
request = function()
  sent = sent + 1
  local id = session ~= "" and session or ("bench-" .. (sent % sessions))
  local body = '{"user_message":"Hello!","user_name":"Alice","session_id":"' .. id .. '"}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
response = function()
  answered = answered + 1
  if answered >= count then wrk.thread:stop() end
end
