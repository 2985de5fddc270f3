-- wrk script for bench/run.sh. Request shape from the environment:
--   BENCH_METHOD  GET (default) or POST
--   BENCH_BODY    request body (sent with Content-Type: application/json) when set
--   BENCH_AUTH    bearer token (sent as Authorization: Bearer <token>) when set
-- done() prints one machine-readable "BENCH ..." line (latencies in microseconds) that
-- run.sh parses; wrk's own --latency report is printed above it.
wrk.method = os.getenv("BENCH_METHOD") or "GET"

local body = os.getenv("BENCH_BODY")
if body ~= nil and body ~= "" then
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end

local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
