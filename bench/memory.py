"""Memory: what one cached 1 KiB response costs the proxy process, and proof
that a 1 GiB response streams through in bounded memory.

    .venv/bin/python bench/memory.py [--entries 20000] [--big-bytes 1073741824]

Per entry: starts the proxy with cache.max_bytes = 1GiB (nothing is evicted),
warms it up, reads its VmRSS, fills N distinct 1 KiB responses (/item/<n>)
through it, checks a sample are now hits, reads VmRSS again: bytes per entry =
delta RSS / N. Beside it, the store's own accounting (stats().bytes / entries)
and the Python heap per entry (tracemalloc), both measured in this process on
entries built by the proxy's own code from the same origin answers.

1 GiB: a fresh proxy with the default cache.max_object_bytes (8 MiB) streams
/big?size=1073741824; the client reads and discards, checking the byte count,
and stops reading for 1 s after 64 MiB (so the proxy must apply back-pressure
to the origin rather than buffer), while the proxy's VmRSS is sampled every
50 ms. Reports the peak sample and VmHWM (the kernel's own high-water mark for
the process's whole life).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
import tracemalloc

import aiohttp
from harness import (
    Child,
    get,
    mib,
    proc_status,
    rss,
    running,
    start_origin,
    start_proxy,
)

ENTRY_TARGET = 2.5 * 1024   # the issue: <= 2.5 KiB per cached 1 KiB response, all told
BIG_TARGET = 100 * 2**20    # the issue: RSS < 100 MiB while a 1 GiB response streams
GiB = 2**30
STALL_AFTER = 64 * 2**20    # the 1 GiB reader pauses once, after this many bytes


async def fetch_all(base: str, paths: list[str], concurrency: int) -> dict[str, int]:
    """GET every path (bounded concurrency); counts X-Cache values and statuses."""
    seen: dict[str, int] = {}
    queue = iter(paths)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for path in queue:
                async with session.get(base + path) as resp:
                    await resp.read()
                    tag = f"{resp.status} {resp.headers.get('X-Cache', '-')}"
                    seen[tag] = seen.get(tag, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


def settle(pid: int) -> int:
    """VmRSS once it stops moving (freed buffers, a late GC), at most ~1 s."""
    last = rss(pid)
    for _ in range(10):
        time.sleep(0.1)
        now = rss(pid)
        if now == last:
            break
        last = now
    return last


def per_entry(entries: int, concurrency: int = 32) -> dict:
    origin = start_origin()
    proxy = start_proxy(origin.url, env={"CACHEPROXY_CACHE_MAX_BYTES": "1GiB"},
                        name="proxy-memory")
    with running(origin, proxy):
        warm = max(1000, entries // 20)
        # Warm-up: the same kind of traffic, so that pools, buffers and code paths
        # allocated once are in the baseline, not in the per-entry figure.
        asyncio.run(fetch_all(proxy.url, [f"/item/warm-{i}" for i in range(warm)] * 2,
                              concurrency))
        before = settle(proxy.pid)
        t0 = time.monotonic()
        fill = asyncio.run(fetch_all(proxy.url, [f"/item/{i}" for i in range(entries)],
                                     concurrency))
        fill_seconds = time.monotonic() - t0
        after = settle(proxy.pid)
        sample = random.Random(0).sample(range(entries), min(500, entries))
        check = asyncio.run(fetch_all(proxy.url, [f"/item/{i}" for i in sample], concurrency))
        origin_items = json.loads(get(origin.port, "/__stats").body).get("/item 200", 0)
    if fill.get("200 MISS") != entries or check.get("200 HIT") != len(sample):
        raise RuntimeError(f"fill {fill}, sample {check}: not every entry was stored")
    if origin_items != warm + entries:
        raise RuntimeError(f"origin served {origin_items} items for {warm + entries} misses")
    return {
        "entries": entries, "warmup_entries": warm, "rss_before": before, "rss_after": after,
        "bytes_per_entry": (after - before) / entries, "fill_seconds": round(fill_seconds, 2),
        "fill_rps": round(entries / fill_seconds), "sample_hits": check.get("200 HIT", 0),
        "sample": len(sample),
    }


def store_accounting(entries: int, origin: Child) -> dict | None:
    """Entries built the proxy's way (make_stored_response from the origin's real
    fields) in a MemoryStore here: its accounting, and the heap it takes."""
    try:
        from cacheproxy.http.cache_key import primary_key
        from cacheproxy.http.stored import Heuristics, make_stored_response
        from cacheproxy.store.memory import MemoryStore
    except ImportError as exc:  # the internals moved: report without this part
        return {"error": f"unavailable: {exc}"}

    async def answers() -> list[tuple[list[tuple[str, str]], bytes]]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            out = []
            for i in range(min(entries, 200)):  # fields and bodies of 200 real answers
                async with session.get(f"{origin.url}/item/{i}") as resp:
                    out.append((list(resp.headers.items()), await resp.read()))
            return out

    real = asyncio.run(answers())
    host = f"127.0.0.1:{origin.port}"
    store = MemoryStore(4 * GiB)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    async def fill() -> None:
        for i in range(entries):
            pairs, body = real[i % len(real)]
            # New objects per entry, as each response parsed off a socket has its own.
            body = bytes(bytearray(body[:-8] + b"%08d" % i))
            pairs = [(k.encode().decode(), v.encode().decode()) for k, v in pairs]
            now = time.time()
            entry = make_stored_response(
                key=primary_key("http", host, f"/item/{i}"), vary=(), vary_values=(),
                status=200, pairs=pairs, body=body, request_time=now,
                response_time=now, shared=True, heuristics=Heuristics(),
            )
            await store.put(entry)

    asyncio.run(fill())
    heap = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    stats = store.stats()
    return {"entries": stats.entries, "accounted_bytes": stats.bytes,
            "accounted_per_entry": stats.bytes / max(1, stats.entries),
            "heap_per_entry": heap / entries}


def big_stream(size: int = GiB, interval: float = 0.05, stall: float = 1.0) -> dict:
    origin = start_origin()
    # The default object limit, set explicitly so a changed default cannot hide it.
    proxy = start_proxy(origin.url, env={"CACHEPROXY_CACHE_MAX_OBJECT_BYTES": "8MiB"},
                        name="proxy-big")
    with running(origin, proxy):
        get(proxy.port, "/big?size=65536")  # warm the streaming path
        baseline = settle(proxy.pid)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append(rss(proxy.pid))
                except (OSError, KeyError):
                    return
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def download() -> tuple[int, dict[str, str], float]:
            timeout = aiohttp.ClientTimeout(total=600, sock_read=60)
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as s:
                t0 = time.monotonic()
                async with s.get(f"{proxy.url}/big?size={size}") as resp:
                    got, stalled = 0, False
                    async for chunk in resp.content.iter_any():
                        got += len(chunk)  # read and discard
                        if not stalled and got >= STALL_AFTER:
                            # A reader that stops: the proxy must stop reading the
                            # origin too (back-pressure), not buffer what it sends.
                            stalled = True
                            await asyncio.sleep(stall)
                    return got, dict(resp.headers), time.monotonic() - t0

        try:
            got, headers, seconds = asyncio.run(download())
        finally:
            stop.set()
            sampler.join()
        status = proc_status(proxy.pid)
        again = get(proxy.port, "/big?size=65536")  # still serving afterwards
    if got != size:
        raise RuntimeError(f"received {got} bytes of {size}")
    peak = max(samples) if samples else 0
    return {
        "bytes": size, "received": got, "seconds": round(seconds, 2), "stall_seconds": stall,
        "mib_per_s": round(size / 2**20 / max(0.001, seconds - stall)),
        "x_cache": headers.get("X-Cache"),
        "cache_status": headers.get("Cache-Status"), "rss_baseline": baseline,
        "rss_peak_sampled": peak, "samples": len(samples), "vm_hwm": status.get("VmHWM", 0),
        "rss_after": status.get("VmRSS", 0), "still_serving": again.status == 200,
        "under_target": max(peak, status.get("VmHWM", 0)) < BIG_TARGET,
    }


def run_all(entries: int = 20_000, big: int = GiB) -> dict:
    result: dict = {"per_entry": per_entry(entries)}
    origin = start_origin()
    with running(origin):
        result["store"] = store_accounting(entries, origin)
    result["big"] = big_stream(big)
    return result


def size_label(n: int) -> str:
    return f"{n / GiB:g} GiB" if n % (GiB // 4) == 0 else f"{n / 2**20:.0f} MiB"


def summary(m: dict) -> str:
    p, s, b = m["per_entry"], m.get("store") or {}, m["big"]
    ok = "met" if p["bytes_per_entry"] <= ENTRY_TARGET else "NOT met"
    lines = [
        f"Memory per cached 1 KiB response: {p['bytes_per_entry']:,.0f} bytes "
        f"({p['bytes_per_entry'] / 1024:.2f} KiB) of process RSS, over {p['entries']:,} entries "
        f"(RSS {mib(p['rss_before'])} -> {mib(p['rss_after'])}; "
        f"target <= 2.5 KiB: {ok}; Varnish ~2.0 KB, Squid ~8 KB).",
    ]
    if "accounted_per_entry" in s:
        lines.append(
            f"  the store accounts {s['accounted_per_entry']:,.0f} bytes per entry "
            f"(stats().bytes / entries); the Python heap holds {s['heap_per_entry']:,.0f} "
            f"bytes per entry (tracemalloc)."
        )
    elif s:
        lines.append(f"  store accounting: {s.get('error')}")
    big_ok = "met" if b["under_target"] else "NOT met"
    lines.append(
        f"{size_label(b['bytes'])} response through the proxy: {b['received']:,} bytes in "
        f"{b['seconds']} s "
        f"({b['mib_per_s']} MiB/s; the reader stalls {b['stall_seconds']} s after 64 MiB), "
        f"X-Cache {b['x_cache']}, Cache-Status {b['cache_status']!r}; "
        f"proxy RSS {mib(b['rss_baseline'])} before, peak {mib(b['rss_peak_sampled'])} "
        f"({b['samples']} samples at 50 ms), VmHWM {mib(b['vm_hwm'])} "
        f"(target < 100 MiB: {big_ok})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--big-bytes", type=int, default=GiB)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    result = run_all(args.entries, args.big_bytes)
    print(summary(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 1 if args.strict and not targets_met(result) else 0


def targets_met(m: dict) -> bool:
    return m["per_entry"]["bytes_per_entry"] <= ENTRY_TARGET and m["big"]["under_target"]


if __name__ == "__main__":
    sys.exit(main())
