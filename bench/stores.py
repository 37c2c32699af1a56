"""Hit throughput by store and worker count: memory vs Redis, one worker vs two.

    .venv/bin/python bench/stores.py [--duration 5] [--rounds 3] [--quick]

Starts the benchmark origin, a real redis-server (maxmemory + allkeys-lru, as in
docker-compose.yml) and one proxy per setup below, all at once on free loopback ports.
Each setup is first checked to answer /hit1k from its cache (X-Cache: HIT) and, for
Redis, to have stored it there; then wrk loads each in turn, --rounds times interleaved
(so drift on a shared machine hits all alike), and the best round counts. The origin's
counters show that no hit reached it. The request log is off in every setup, so the
figures compare stores, not logging.

Setups:
  memory, 1 worker       the default
  redis + layer          store = "redis", the in-process layer in front (default 32 MiB, 1 s)
  redis, no layer        every hit read from Redis (memory_layer_bytes = 0)
  memory, 2 workers      --workers 2: each its own memory store
  redis + layer, 2 workers

Pinning: single-worker setups run on one CPU, like bench/run.py; two-worker setups get
two, shared with the load generator on a two-core machine (then wrk competes with them,
so read that row as "what a second core is worth here", not as a clean 2x).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import RESULTS, Child, Cpus, free_port, get, get_json, running, start, start_origin
from harness import cacheproxy_command as proxy_command
from run import CheckFailed, Load, best, measure


@dataclass(frozen=True)
class Setup:
    name: str
    env: dict[str, str]
    workers: int = 1


def setups(redis_url: str) -> list[Setup]:
    redis = {"CACHEPROXY_CACHE_STORE": "redis", "CACHEPROXY_CACHE_REDIS_URL": redis_url}
    return [
        Setup("memory, 1 worker", {}),
        Setup("redis + layer, 1 worker", redis),
        Setup("redis, no layer, 1 worker", {**redis, "CACHEPROXY_CACHE_MEMORY_LAYER_BYTES": "0"}),
        Setup("memory, 2 workers", {}, workers=2),
        Setup("redis + layer, 2 workers", redis, workers=2),
    ]


def start_redis(port: int) -> Child:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (make test installs it)")
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    return start("redis", cmd, port)


def start_setup(i: int, s: Setup, upstream: str, cpus: Cpus, prefix: str) -> Child:
    port = free_port()
    cmd = [*proxy_command(), "serve", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
           "--workers", str(s.workers)]
    env = {"CACHEPROXY_LOG_FORMAT": "off", "CACHEPROXY_CACHE_REDIS_PREFIX": f"{prefix}{i}:",
           **s.env}
    cpu = cpus.server if s.workers == 1 else None
    return start(f"proxy-{i}", cmd, port, cpu=cpu, env=env)


def redis_keys(port: int, prefix: str) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", f"{prefix}*"],
                         capture_output=True, text=True, timeout=10, check=True)
    return len(out.stdout.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2, 1, 2
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    cpus = Cpus.plan()
    load = Load("wrk", args.duration, args.warmup, args.connections, 1, cpus.client)
    path, prefix = "/hit1k", f"bench{int(time.time())}:"
    origin = start_origin(cpus.origin)
    redis_port = free_port()
    redis = start_redis(redis_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    all_setups = setups(redis_url)
    proxies = [start_setup(i, s, origin.url, cpus, prefix) for i, s in enumerate(all_setups)]
    rows = []
    with running(origin, redis, *proxies):
        time.sleep(1.0)  # every worker listening
        for i, (s, proxy) in enumerate(zip(all_setups, proxies, strict=True)):
            for _ in range(4):  # each worker sees it once at least
                get(proxy.port, path)
            answer = get(proxy.port, path)
            if answer.header("X-Cache") != "HIT":
                raise CheckFailed(f"{s.name}: {path} is not a hit: {answer.header('X-Cache')}")
            if "redis" in s.name and redis_keys(redis_port, f"{prefix}{i}:") == 0:
                raise CheckFailed(f"{s.name}: nothing was stored in Redis")
        results: dict[str, list[dict]] = {s.name: [] for s in all_setups}
        for r in range(args.rounds):
            for s, proxy in zip(all_setups, proxies, strict=True):
                before = get_json(origin.port, "/__stats")
                m = measure(load, proxy, path, warm=r == 0)
                after = get_json(origin.port, "/__stats")
                if after.get(path, 0) != before.get(path, 0):
                    raise CheckFailed(f"{s.name}: hits reached the origin")
                results[s.name].append(m)
                print(f"  round {r + 1} {s.name}: {m['rps']:.0f} req/s", file=sys.stderr)
        for s in all_setups:
            top = best(results[s.name])
            rows.append({"setup": s.name, "workers": s.workers, "rps": top["rps"],
                         "rounds_rps": top["rounds_rps"], "latency_us": top["latency_us"]})
    base = rows[0]["rps"]
    lines = ["| setup | req/s (best round) | vs memory, 1 worker | p50 ms | p99 ms | rounds |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        p50, p99 = row["latency_us"]["p50"] / 1000, row["latency_us"]["p99"] / 1000
        lines.append(f"| {row['setup']} | {row['rps']:,.0f} | {row['rps'] / base:.0%} | "
                     f"{p50:.2f} | {p99:.2f} | {row['rounds_rps']} |")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stores-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"rows": rows, "cpus": cpus.describe(),
                               "duration": args.duration, "rounds": args.rounds}, indent=2))
    print(f"(results in {Path(out).relative_to(RESULTS.parent.parent)})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        sys.exit(1)
