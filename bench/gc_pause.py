"""Garbage-collection pauses while the cache grows large.

    .venv/bin/python bench/gc_pause.py [--entries 200000] [--seconds 240]

Starts bench/origin.py's raw engine and the proxy (cache.max_bytes = 2GiB, so nothing is
evicted; the JSON request log on), pinned as run.py pins them: the proxy alone on one
CPU. wrk fills `entries` distinct 1 KiB responses through it (/item/<n>: each a miss,
then stored), and stops once /metrics counts them stored (or after `seconds`). All the
while a probe on a keep-alive connection of its own asks for one cached response
(/hit1k) every 2 ms and times each answer: when CPython's collector stops the proxy to
walk every tracked object (a full, generation 2, collection), the probe's answer waits
for it. Then, the store full and the load gone, the probe goes on for a few seconds
beside 100 requests a second (/item/<n> again: hits) that keep the collector's counts
moving.

Reported: the fill's rate; the full collections during the run
(python_gc_collections_total) and how long they stopped the proxy, mean and longest, as
it timed them itself (cacheproxy_gc_pause_seconds, cacheproxy_gc_longest_pause_seconds);
the probe's answers (p50, p99, p99.9, max, and how many took over 20 ms), during the
fill and after it. Run it from two checkouts to compare them (the harness runs the code
beside it).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import HOST, RESULTS, Cpus, get, pinned, running, start_origin, start_proxy

FILL_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/item/" .. counter)
end
"""
PROBE_EVERY = 0.002
SLOW = 0.020  # a probe answer slower than this counts as a stall


class Probe:
    """One keep-alive connection; a GET of a cached response every PROBE_EVERY seconds,
    each answer timed (seconds), on a thread."""

    def __init__(self, port: int, path: str) -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.phase = "before"
        self.by_phase: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> float:
        started = time.perf_counter()
        self.sock.sendall(self.request)
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.file.read(length)
        return time.perf_counter() - started

    def _run(self) -> None:
        while not self._stop.is_set():
            self.by_phase.setdefault(self.phase, []).append(self._one())
            time.sleep(PROBE_EVERY)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 2)

    return {"answers": len(s), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
            "max_ms": round(s[-1] * 1000, 1), "over_20ms": sum(x > SLOW for x in s)}


def metric(port: int, name: str) -> float:
    text = get(port, "/metrics").body.decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found[1]) if found else float("nan")


FULL = 'python_gc_collections_total{generation="2"}'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=240.0, help="the fill's time limit")
    args = ap.parse_args()
    cpus = Cpus.plan()
    origin = start_origin(cpu=cpus.origin, engine="raw")
    proxy = start_proxy(origin.url, cpu=cpus.server,
                        env={"CACHEPROXY_CACHE_MAX_BYTES": "2GiB"})
    RESULTS.mkdir(exist_ok=True)
    lua = RESULTS / "gc_fill.lua"
    lua.write_text(FILL_LUA)
    with running(origin, proxy):
        for _ in range(2):
            get(proxy.port, "/hit1k")
        assert get(proxy.port, "/hit1k").header("X-Cache") == "HIT"
        full_before = metric(proxy.port, FULL)
        with Probe(proxy.port, "/hit1k") as probe:
            time.sleep(1)
            probe.phase = "fill"
            wrk = subprocess.Popen(
                pinned(["wrk", "-t1", "-c32", f"-d{int(args.seconds)}s", "-s", str(lua),
                        proxy.url], cpus.client),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic()
            stored = 0.0
            while wrk.poll() is None and stored < args.entries:
                time.sleep(0.5)
                stored = metric(proxy.port, "cacheproxy_store_entries")
            took = time.monotonic() - started
            wrk.terminate()
            wrk.wait()
            stored = metric(proxy.port, "cacheproxy_store_entries")
            probe.phase = "full store"
            end = time.monotonic() + 10
            n = 0
            while time.monotonic() < end:
                get(proxy.port, f"/item/{1 + n % max(1, int(stored))}")
                n += 1
                time.sleep(0.01)
        full_after = metric(proxy.port, FULL)
        paused = {
            "count": metric(proxy.port, 'cacheproxy_gc_pause_seconds_count{generation="2"}'),
            "seconds": metric(proxy.port, 'cacheproxy_gc_pause_seconds_sum{generation="2"}'),
            "longest": metric(proxy.port, 'cacheproxy_gc_longest_pause_seconds{generation="2"}'),
        }
        rss = int(Path(f"/proc/{proxy.pid}/status").read_text().split("VmRSS:")[1].split()[0])
    report = {
        "entries": int(stored), "fill_seconds": round(took, 1),
        "fill_per_second": round(stored / took), "full_collections": full_after - full_before,
        # as the proxy timed them (gc.callbacks): every full collection since it started
        "full_collection_ms": {
            "mean": round(paused["seconds"] / max(1, paused["count"]) * 1000, 1),
            "longest": round(paused["longest"] * 1000, 1)},
        "rss_mib": round(rss / 1024, 1), "cpus": cpus.describe(),
        "probe": {phase: summary(s) for phase, s in probe.by_phase.items()},
    }
    print(json.dumps(report, indent=2))
    (RESULTS / "gc_pause.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
