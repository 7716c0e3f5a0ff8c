-- Request shape and result format for `cargo xtask bench`'s wrk runs, from the environment:
--   BENCH_METHOD (default GET), BENCH_BODY_FILE (request body, read once),
--   BENCH_HEADERS ("Name: value" pairs separated by "|"),
--   BENCH_HOSTS (a Host header prefix and count, "t%d.localhost:100": requests rotate over
--   t0.localhost .. t99.localhost).
-- `done` prints one JSON line with the counts and latency percentiles in microseconds.

wrk.method = os.getenv("BENCH_METHOD") or "GET"

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
end

local headers = os.getenv("BENCH_HEADERS")
if headers and headers ~= "" then
  for pair in string.gmatch(headers, "[^|]+") do
    local name, value = string.match(pair, "^%s*([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

local hosts = {}
local spec = os.getenv("BENCH_HOSTS")
if spec and spec ~= "" then
  local pattern, count = string.match(spec, "^(.*):(%d+)$")
  for i = 0, tonumber(count) - 1 do
    hosts[#hosts + 1] = string.format(pattern, i)
  end
end

local next_host = 0
if #hosts > 0 then
  request = function()
    next_host = next_host % #hosts + 1
    wrk.headers["Host"] = hosts[next_host]
    return wrk.format()
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
