-- Request shape from the environment, and one JSON line of results at the end.
--   WRK_BODY=N   POST an N-byte body instead of GET
--   WRK_CLOSE=1  Connection: close (a new connection per request)
local body = tonumber(os.getenv("WRK_BODY") or "0")
if body > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", body)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("WRK_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
