-- wrk script for bench/http.sh: POSTs /allowed bodies in turn from a file of one JSON body
-- per line (written by `cargo run --release --example bodies`), over keep-alive connections.
-- Usage: wrk -s bench/allowed.lua URL -- BODIES_FILE [PATH]
-- PATH defaults to /allowed; the Cerbos target of http.sh passes /api/check/resources with the
-- Cerbos bodies of `bodies` (same checks, same order).
-- Each thread starts at a different offset so the two threads do not send the same checks
-- at the same moment. `done` prints one machine-readable RESULT line for http.sh.

local requests = {}
local n = 0
local i = 0

local thread_no = 0
function setup(thread)
  thread:set("thread_no", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  local path = args[1] or "bench/data/bodies.txt"
  local target = args[2] or "/allowed"
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  local headers = { ["Content-Type"] = "application/json" }
  -- A bearer key (bench/http.sh's permd-auth targets; a wrong one for the flood).
  local key = os.getenv("PERMD_BENCH_KEY")
  if key and #key > 0 then
    headers["Authorization"] = "Bearer " .. key
  end
  for line in f:lines() do
    if #line > 0 then
      n = n + 1
      requests[n] = wrk.format("POST", target, headers, line)
    end
  end
  f:close()
  assert(n > 0, "no bodies in " .. path)
  i = ((thread_no or 0) * 509) % n
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, _)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
