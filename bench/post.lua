-- wrk script: one request shape per scenario, results printed as one JSON line by done().
-- BENCH_METHOD (GET|POST), BENCH_BODY (file with the JSON body), BENCH_TOKENS (file, one JWT per
-- line: every request gets a token no other request uses, since the service refuses replays).
local method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY")
local tokens_file = os.getenv("BENCH_TOKENS")
local threads = {}
local tokens = {}
local next_index = 0
local stride = 1

wrk.method = method
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  if tokens_file and tokens_file ~= "" then
    for line in io.lines(tokens_file) do tokens[#tokens + 1] = line end
  end
  next_index = id
  stride = tonumber(os.getenv("BENCH_THREADS") or "1")
end

function request()
  if #tokens > 0 then
    local token = tokens[(next_index % #tokens) + 1]
    next_index = next_index + stride
    -- wrk.format replaces wrk.headers with the table given, so carry Content-Type over.
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Authorization"] = "Bearer " .. token
    return wrk.format(nil, nil, headers)
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
