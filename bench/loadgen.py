"""A Python load generator, used by run.py when wrk is not installed.

    python bench/loadgen.py URL --connections 64 --duration 5 [--max-requests N]

Keeps `connections` keep-alive connections busy with GETs for `duration` seconds
(or until max-requests), then prints one line in the same shape as
report.lua's: `WRK_JSON {...}`. Bounded in time and count.

It is far slower than wrk: an aiohttp client spends about as much CPU per
request as an aiohttp server, so its figures mostly measure itself. They still
show correctness and a rough proxy/ceiling ratio; install wrk for real numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


async def load(url: str, connections: int, duration: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    start = time.perf_counter()
    deadline = start + duration

    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:
        async def worker() -> None:
            nonlocal received
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        if resp.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                received += len(body)

        await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    us = [x * 1e6 for x in latencies]
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "bytes": received,  # bodies only (wrk counts whole responses)
        "errors": errors,
        "latency_us": {
            "p50": int(percentile(us, 50)), "p90": int(percentile(us, 90)),
            "p99": int(percentile(us, 99)), "max": int(us[-1]) if us else 0,
            "mean": sum(us) / len(us) if us else 0.0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    coro = load(args.url, args.connections, args.duration, args.max_requests)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print("WRK_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
