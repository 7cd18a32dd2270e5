-- wrk script for bench/ingest.sh: each request is one phone's upload of 8 observations.
-- A random registered device (token from $TOKENS) reports 8 sightings of random
-- registered MACs ($MACS) within the last hour, each with a geohash, over keep-alive connections.
-- Bodies come from a pool of 4,096 made at start, so that the load generator spends
-- its share of the two cores on sending, not on formatting JSON.
local tokens, macs, bodies = {}, {}, {}
-- 400 geohashes of 6 characters in 100 cells of 4 (the contact rollup's), over London.
local cells = {}
for c = 0, 99 do
  for k = 0, 3 do
    local alphabet = "0123456789bcdefghjkmnpqrstuvwxyz"
    local function ch(i) return alphabet:sub(i % 32 + 1, i % 32 + 1) end
    cells[#cells + 1] = "gc" .. ch(math.floor(c / 32) + 16) .. ch(c) .. ch(k * 7) .. ch(k * 11 + c)
  end
end

local function load(path, into)
  for line in io.lines(path) do into[#into + 1] = line end
end

function setup(thread)
  thread:set("id", math.random(1, 1000000))
end

local function sighting(now)
  return string.format(
    '{"observed":"%s","observed_at":"%s","duration_s":%d,"rssi":%d,"tx_power":%d,"location":"%s"}',
    macs[math.random(#macs)],
    os.date("!%Y-%m-%dT%H:%M:%SZ", now - math.random(0, 3600)),
    math.random(5, 900), math.random(-95, -40), math.random(-20, 0),
    cells[math.random(#cells)])
end

function init(args)
  load(os.getenv("TOKENS"), tokens)
  load(os.getenv("MACS"), macs)
  math.randomseed(os.time() + (id or 0))
  local now = os.time()
  for b = 1, 4096 do
    local parts = {}
    for i = 1, 8 do parts[i] = sighting(now) end
    bodies[b] = "[" .. table.concat(parts, ",") .. "]"
  end
end

function request()
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)],
  }
  return wrk.format("POST", "/v1/observations", headers, bodies[math.random(#bodies)])
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
