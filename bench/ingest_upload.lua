-- wrk script for bench/ingest.sh: each request is one phone's upload of 8 observations.
-- A random registered device (token from $TOKENS) reports 8 sightings of random
-- registered MACs ($MACS) within the last hour, over keep-alive connections.
local tokens, macs = {}, {}

local function load(path, into)
  for line in io.lines(path) do into[#into + 1] = line end
end

function setup(thread)
  thread:set("id", math.random(1, 1000000))
end

function init(args)
  load(os.getenv("TOKENS"), tokens)
  load(os.getenv("MACS"), macs)
  math.randomseed(os.time() + (id or 0))
end

local function sighting(now)
  return string.format(
    '{"observed":"%s","observed_at":"%s","duration_s":%d,"rssi":%d,"tx_power":%d}',
    macs[math.random(#macs)],
    os.date("!%Y-%m-%dT%H:%M:%SZ", now - math.random(0, 3600)),
    math.random(5, 900), math.random(-95, -40), math.random(-20, 0))
end

function request()
  local now = os.time()
  local parts = {}
  for i = 1, 8 do parts[i] = sighting(now) end
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)],
  }
  return wrk.format("POST", "/v1/observations", headers, "[" .. table.concat(parts, ",") .. "]")
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
