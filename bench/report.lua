-- wrk reporter for bench/run.py: one machine-readable line after wrk's own summary.
-- Latencies are in microseconds; wrk measures each request on its connection
-- (no coordinated-omission correction), the same way for proxy and ceiling.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

-- WRK_DISTINCT_HEADS=1 (peers.py/run.py --distinct-heads): every request carries its own
-- X-Request-Id, as behind a load balancer that adds one, so that no two heads are the same
-- bytes (a server that keeps what it made of the last head gains nothing from it).
if os.getenv("WRK_DISTINCT_HEADS") == "1" then
  local n = 0
  request = function()
    n = n + 1
    return wrk.format(nil, nil, {["X-Request-Id"] = tostring(n)})
  end
end
