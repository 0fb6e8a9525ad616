-- wrk script: SendTelemetryEvent (awsJson 1.0) with realistic bodies, rotating over many user
-- tokens (one per user, as real clients) and a fresh clientToken per request.
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

local tokens = {}
local counter = 0
local template = nil

function init(args)
  for line in io.lines(args[1]) do table.insert(tokens, line) end
  local f = io.open(args[2], "r"); template = f:read("*a"); f:close()
end

function request()
  counter = counter + 1
  local token = tokens[(counter % #tokens) + 1]
  local ct = string.format("bench%03d-%012d-4000-8000-%012d", tid, counter, os.time() % 1000000)
  local body = string.gsub(template, "CLIENT_TOKEN", ct)
  return wrk.format("POST", "/", {
    ["Content-Type"] = "application/x-amz-json-1.0",
    ["X-Amz-Target"] = "AmazonCodeWhispererService.SendTelemetryEvent",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end
