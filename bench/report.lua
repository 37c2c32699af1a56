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
-- WRK_PIPELINE=N (peers.py --pipeline): each write carries N requests, sent again once all N
-- answers are in (HTTP/1.1 pipelining), so that wrk spends a fraction of the CPU per answer
-- it spends otherwise: on a machine whose CPUs the servers share with wrk (bench/peers.py's
-- --workers rows), the load then takes little of what the servers could use.
local depth = tonumber(os.getenv("WRK_PIPELINE") or "1")
local distinct = os.getenv("WRK_DISTINCT_HEADS") == "1"
if distinct or depth > 1 then
  local n = 0
  local same
  request = function()
    if not distinct and same then return same end
    local batch = {}
    for i = 1, depth do
      if distinct then
        n = n + 1
        batch[i] = wrk.format(nil, nil, {["X-Request-Id"] = tostring(n)})
      else
        batch[i] = wrk.format(nil)
      end
    end
    local all = table.concat(batch)
    if not distinct then same = all end
    return all
  end
end
