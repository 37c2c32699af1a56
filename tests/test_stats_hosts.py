"""Requests by host in the stats API (the dashboard's Hosts table): bounded however many
hosts a forward proxy's clients visit, every request counted once, and a CONNECT tunnel
counted as TUNNEL, never as an upstream failure (stats, /metrics)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from support import echo_server

from cacheproxy.observe.record import CACHE_STATUSES, LogRecord
from cacheproxy.observe.stats import HOST_CHARS, HOSTS_KEPT, HOSTS_SHOWN, Stats


def record(host: str, cache: str = "MISS", sent: int = 10, bytes_in: int | None = None
           ) -> LogRecord:
    return LogRecord(time=1_800_000_000.0, client="127.0.0.1", method="GET", host=host,
                     path="/", status=200, cache=cache, bytes=sent, total_ms=1.0,
                     bytes_in=bytes_in)


def totals(snapshot: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """Requests, bytes and requests by cache status over the listed hosts and the rest."""
    parts = [*snapshot["hosts"], snapshot["hosts_other"]]
    by_cache: dict[str, int] = {}
    for part in parts:
        for cache, n in part["by_cache"].items():
            by_cache[cache] = by_cache.get(cache, 0) + n
    return sum(p["requests"] for p in parts), sum(p["bytes"] for p in parts), by_cache


def test_hosts_are_listed_busiest_first_with_counts_by_cache_status() -> None:
    stats = Stats(0.0)
    for cache in ("MISS", "HIT", "HIT"):
        stats.add(record("localhost:8000", cache, sent=100))
    stats.add(record("example.com:443", "TUNNEL", sent=5000, bytes_in=700))
    stats.add(record("blocked.test", "DENIED", sent=60))
    snap = stats.snapshot(1.0, {}, "x")
    assert snap["hosts"] == [
        {"host": "localhost:8000", "requests": 3, "bytes": 300, "bytes_in": 0,
         "by_cache": {"MISS": 1, "HIT": 2}},
        {"host": "blocked.test", "requests": 1, "bytes": 60, "bytes_in": 0,
         "by_cache": {"DENIED": 1}},  # ties: by name
        {"host": "example.com:443", "requests": 1, "bytes": 5000, "bytes_in": 700,
         "by_cache": {"TUNNEL": 1}},
    ]
    assert snap["hosts_other"] == {"requests": 0, "bytes": 0, "bytes_in": 0, "by_cache": {}}
    assert snap["errors"] == 0 and snap["by_cache"]["TUNNEL"] == 1


def test_many_hosts_stay_bounded_and_every_request_is_counted_once() -> None:
    """A forward proxy meets as many hosts as its clients visit: memory stays bounded,
    the busiest hosts keep exact figures, and the rest is summed in hosts_other."""
    stats = Stats(0.0)
    busy = {f"busy{i}.example": 50 + i for i in range(5)}
    for host, n in busy.items():
        for _ in range(n):
            stats.add(record(host, "HIT", sent=2))
    for i in range(10 * HOSTS_KEPT):  # a crawl: thousands of hosts, one request each
        stats.add(record(f"once{i}.example", "TUNNEL" if i % 2 else "MISS", sent=3))
    stats.add(record("x" * 10_000))  # a hostile Host is counted under its first characters
    assert len(stats.hosts.counts) <= 2 * HOSTS_KEPT
    snap = stats.snapshot(1.0, {}, "x")
    assert len(snap["hosts"]) == HOSTS_SHOWN
    listed = {h["host"]: h for h in snap["hosts"]}
    for host, n in busy.items():  # exact: never folded away
        assert listed[host]["requests"] == n and listed[host]["by_cache"] == {"HIT": n}
    assert [h["host"] for h in snap["hosts"][:5]] == sorted(busy, key=busy.get, reverse=True)
    requests, sent, by_cache = totals(snap)
    assert requests == snap["requests"] == sum(busy.values()) + 10 * HOSTS_KEPT + 1
    assert sent == 2 * sum(busy.values()) + 3 * 10 * HOSTS_KEPT + 10
    assert by_cache == {k: v for k, v in snap["by_cache"].items() if v}
    assert all(len(h) <= HOST_CHARS for h in stats.hosts.counts)
    assert set(by_cache) <= set(CACHE_STATUSES)


# -- through the proxy ------------------------------------------------------------------


async def test_forward_and_tunnel_traffic_is_counted_by_host_and_tunnels_are_no_errors(
        proxy: Any, origin: Any) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="p", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    site = await origin(app)

    echo, echo_port = await echo_server()
    try:
        client = await proxy(site, forward={"enabled": True, "allow_hosts": ["localhost"],
                                            "connect_ports": [echo_port]})

        async def send(data: bytes) -> bytes:
            """data to the proxy, and what comes back until it closes."""
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        url = f"http://localhost:{site.port}/a"
        for _ in range(2):  # MISS, then HIT
            got = await send(f"GET {url} HTTP/1.1\r\nHost: localhost:{site.port}\r\n"
                             f"Connection: close\r\n\r\n".encode())
            assert got.startswith(b"HTTP/1.1 200")
        got = await send(b"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n"
                         b"Connection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 403")
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(f"CONNECT localhost:{echo_port} HTTP/1.1\r\n"
                     f"Host: localhost:{echo_port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"through the tunnel")
        writer.write_eof()  # the echo server answers, then closes: the tunnel ends
        assert await asyncio.wait_for(reader.read(), 5) == b"through the tunnel"
        writer.close()
        for _ in range(100):  # the tunnel's line is recorded once both sides closed
            snap = await (await client.get("/_cacheproxy/stats")).json()
            if snap["by_cache"]["TUNNEL"]:
                break
            await asyncio.sleep(0.02)
        hosts = {h["host"]: h for h in snap["hosts"]}
        assert hosts[f"localhost:{site.port}"]["by_cache"] == {"MISS": 1, "HIT": 1}
        assert hosts["blocked.test"]["by_cache"] == {"DENIED": 1}
        tunnel = hosts[f"localhost:{echo_port}"]
        assert tunnel["by_cache"] == {"TUNNEL": 1}
        assert tunnel["bytes"] == tunnel["bytes_in"] == len(b"through the tunnel")
        assert snap["errors"] == 0 and snap["by_cache"]["ERROR"] == 0
        assert snap["requests"] == 4 and totals(snap)[0] == 4  # admin calls are not traffic
        metrics = await (await client.get("/metrics")).text()
        assert "cacheproxy_errors_total 0.0" in metrics
        assert 'cacheproxy_requests_total{cache="TUNNEL",route="default"} 1.0' in metrics
        # (every status is a series from the start: ERROR's stays at 0)
        assert 'cacheproxy_requests_total{cache="ERROR",route="default"} 0.0' in metrics
    finally:
        echo.close()

