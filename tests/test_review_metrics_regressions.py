"""Review of what operators graph and alert on: `/metrics` (Prometheus text exposition),
the admin `stats` JSON and the dashboard, read as Prometheus reads them. What was looked
at: the exposition parsed with prometheus_client's own parser (TYPE/HELP, `_total` on
counters, base units, histogram buckets cumulative with `+Inf` equal to `_count`, no NaN);
counters that must never go down (a reset, to rate()) across reloads, clears, evictions
and `--workers`; gauges against what the store and the listener hold; each request counted
once, in the outcome its log line shows. Real proxies on 127.0.0.1 in front of aiohttp
origins, `cacheproxy serve --workers 2` where the workers' sums are the question."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop
from prometheus_client.parser import text_string_to_metric_families
from support import echo_server, proxy_for_toml, read_json_log

from cacheproxy.observe.metrics import Counts, counts_json, counts_of, retired, summed
from cacheproxy.observe.record import CACHE_STATUSES
from cacheproxy.observe.stats import Stats
from cacheproxy.observe.stats_merged import merged
from cacheproxy.store.base import StoreStats


def _worker(evictions: int, hits: int = 1) -> Counts:
    """One worker's Counts with a Redis store as it last read Redis's INFO."""
    counts = counts_of(Stats(0.0), StoreStats(5, 1000, 10_000, evictions))
    return dataclasses.replace(counts, by_route_cache={("default", "HIT"): hits})


def _snapshot(evictions: int) -> tuple[dict[str, Any], int]:
    stats = Stats(0.0)
    store = {"backend": "layered", "entries": 5, "bytes": 1000, "max_bytes": 10_000,
             "evictions": evictions}
    return stats.snapshot(1.0, store, "test"), 0


def test_redis_evictions_with_workers_never_go_down_between_scrapes() -> None:
    """What was wrong: with --workers and the Redis store, each worker reads Redis's
    evicted_keys every 5 s, each at its own phase, and /metrics showed the reading of the
    worker the scrape reached: a scrape reaching the one that read last (120), then one
    reaching the other (100), saw cacheproxy_store_evictions_total go down, which
    Prometheus' rate()/increase() take for a counter reset (a spike of phantom
    evictions on the graph; an eviction-rate alert fired). The stats API's merge did the
    same to the dashboard's evictions. Now the sum takes the highest reading, whichever
    worker answers. Prometheus' counter semantics (a counter only resets at a restart);
    Varnish's n_lru_nuked, summed by varnishstat, never goes down. Severity: medium."""
    fresh, late = _worker(120), _worker(100)
    assert summed(fresh, [late], shared_store=True).store[3] == 120
    assert summed(late, [fresh], shared_store=True).store[3] == 120  # was 100: a "reset"
    # The store's gauges are the answering worker's reading, shown once (not summed).
    assert summed(late, [fresh], shared_store=True).store[:3] == [5, 1000, 10_000]
    # A memory store per worker: its evictions are summed, as before.
    assert summed(late, [fresh], shared_store=False).store[3] == 220
    assert merged(_snapshot(100), [_snapshot(120)], True, 2)["store"]["evictions"] == 120
    assert merged(_snapshot(120), [_snapshot(100)], True, 2)["store"]["evictions"] == 120
    assert merged(_snapshot(100), [_snapshot(120)], False, 2)["store"]["evictions"] == 220


def _tagged_origin() -> web.Application:
    """Any GET: a fresh, validated answer with a few fields after the usual ones."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={
            "Cache-Control": "max-age=600", "ETag": '"e"', "X-Trailing": "1"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


@pytest.mark.parametrize("ask", [{"Range": "bytes=0-1"}, {"If-None-Match": '"e"'}],
                         ids=["range-on-a-miss", "conditional-on-a-miss"])
async def test_a_range_or_a_304_on_a_miss_names_this_cache_in_cache_status_and_via(
        origin: Any, proxy: Any, tmp_path: Path, ask: dict[str, str]) -> None:
    """What was wrong: the answer to a Range request on a miss (a 206 cut from the 200
    being stored) and the 304 to a conditional request on a miss (the client's validator
    matched what was being stored) named the cache after a header field: a loop over the
    fields to drop or copy reused the variable holding the cache's name. The client saw
    `Cache-Status: Content-MD5; fwd=uri-miss; ...` / `Via: 1.1 Content-MD5` (the 304:
    `Server; ...`, the origin's last field), and the request log's cache_status said the
    same, so log tooling and dashboards that group by the member's cache name counted
    those requests under another cache. RFC 9211 §2 (the member's name identifies the
    cache), RFC 9110 §7.6.3 (Via names the recipient as proxy.via says). Severity: medium."""
    c = await proxy(await origin(_tagged_origin()), proxy={"via": "edge-1"},
                    log={"path": str(tmp_path / "requests.log")})
    resp = await c.get("/page", headers=ask)
    assert resp.status in (206, 304)
    assert resp.headers["Cache-Status"].startswith("edge-1; fwd=uri-miss"), resp.headers
    assert resp.headers.getall("Via") == ["1.1 edge-1"]
    line = (await read_json_log(c))[-1]
    assert line["cache"] == "MISS" and line["cache_status"].startswith("edge-1; "), line


async def _scrape(base: str) -> dict[str, float]:
    """/metrics at base, parsed by Prometheus' own parser: {sample name{labels}: value}."""
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def _served(port: int) -> asyncio.StreamWriter:
    """A client connection to the proxy that had one request answered (so it is open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return writer


async def test_client_connections_open_and_refused_at_the_limit_are_in_metrics(
        origin: Any, tmp_path: Path) -> None:
    """What was wrong: /metrics had no figure of client connections. A proxy at
    proxy.max_client_connections closes each new connection as it arrives, said only in a
    WARNING at most once a minute: nothing to graph or alert on (clients saw connections
    reset while every request counter looked healthy). nginx's stub_status gives active
    connections and accepts - handled; Varnish sess_conn / sess_drop. Now
    cacheproxy_client_connections (open now, tunnels too), cacheproxy_client_connections_max
    and cacheproxy_client_connections_refused_total, summed over --workers like the rest.
    Severity: medium (an outage that the metrics did not show)."""
    up = await origin(_tagged_origin())
    admin = free_port()
    env = clean_env(CACHEPROXY_PROXY_MAX_CLIENT_CONNECTIONS="2",
                    CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin}")
    proc, port = await start_serve("--upstream", str(up.make_url("")), cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{admin}"
    try:
        # (start_serve's probe connection may still be open: wait for it to be gone)
        assert await _until_figure(base, "cacheproxy_client_connections", 0)
        first, second = await _served(port), await _served(port)
        reader, third = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""  # closed as it arrived: the limit
        third.close()
        metrics = await _scrape(base)
        assert metrics["cacheproxy_client_connections"] == 2, metrics
        assert metrics["cacheproxy_client_connections_max"] == 2
        assert metrics["cacheproxy_client_connections_refused_total"] == 1
        first.close()
        second.close()
        assert await _until_figure(base, "cacheproxy_client_connections", 0)
        assert (await _scrape(base))["cacheproxy_client_connections_refused_total"] == 1
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


async def _until_figure(base: str, name: str, value: float) -> bool:
    """Scrapes until the figure is value (a connection closed by a client is seen
    closed by the proxy a loop iteration later); False after 3 s."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if (await _scrape(base)).get(name) == value:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_client_connections_with_workers_are_every_workers(
        origin: Any, tmp_path: Path) -> None:
    """The companion of the test above with --workers 2: however the kernel spread six
    open connections over the workers, the scrape (whichever worker it reached) shows six
    open and each worker's limit added. Severity: medium."""
    up = await origin(_tagged_origin())
    admin = free_port()
    env = clean_env(CACHEPROXY_PROXY_MAX_CLIENT_CONNECTIONS="50",
                    CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin}")
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{admin}"
    try:
        assert await _until_figure(base, "cacheproxy_client_connections", 0)
        held = [await _served(port) for _ in range(6)]
        for _ in range(10):  # whichever worker answers the scrape
            metrics = await _scrape(base)
            assert metrics["cacheproxy_processes_counted"] == 2, metrics
            assert metrics["cacheproxy_client_connections"] == 6, metrics
            assert metrics["cacheproxy_client_connections_max"] == 100
        for writer in held:
            writer.close()
        assert await _until_figure(base, "cacheproxy_client_connections", 0)
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


def test_a_restarted_workers_predecessor_keeps_its_refused_connections_not_its_open_ones(
        ) -> None:
    """With --workers, a worker restarted in a slot adds its predecessor's last counters
    (proxy/siblings.py RETIRED): the connections it refused stay counted (a counter), the
    connections it had open and its limit went with it (gauges)."""
    dead = counts_of(Stats(0.0), StoreStats(0, 0, 0, 0), (7, 50, 3))
    kept = retired(counts_json(dead))
    assert kept is not None and kept.connections == [0, 0, 3]
    new = counts_of(Stats(0.0), StoreStats(0, 0, 0, 0), (1, 50, 0))
    assert summed(new, [kept], shared_store=False).connections == [1, 50, 3]


async def test_stats_name_the_memory_store_memory_with_workers(
        origin: Any, tmp_path: Path) -> None:
    """What was wrong: with --workers and the memory store, the stats API and the
    dashboard's Store panel named the backend "siblingsmemory" (the class that tells the
    other workers what it forgot), a name no setting has: cache.store = "memory", and the
    single-process server says "memory". Severity: low."""
    up = await origin(_tagged_origin())
    proc, port = await start_serve("--upstream", str(up.make_url("")), "--workers", "2",
                                   cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/_cacheproxy/stats") as resp:
            stats = await resp.json()
        assert stats["processes_counted"] == 2 and stats["store"]["backend"] == "memory", stats
    finally:
        code, err = await stop(proc)
    assert code == 0 and "Traceback" not in err, err


async def test_evictions_count_responses_as_entries_does(origin: Any, proxy: Any) -> None:
    """What was wrong: cacheproxy_store_entries counts responses (each Vary variant), but
    cacheproxy_store_evictions_total counted URLs: a URL evicted with its three variants
    (Accept-Encoding, Accept-Language) added 1, so evictions read a third of the responses
    the store lost, and stored = entries + evicted did not add up. Varnish's n_lru_nuked
    counts objects (variants). Now an eviction counts the responses it removed.
    Severity: low."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="v" * 2000 + request.headers.get("Accept", ""),
                            headers={"Cache-Control": "max-age=600", "Vary": "Accept"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), cache={"max_bytes": 30_000})
    stored = 0
    for accept in ("a", "b", "c"):  # one URL, three responses
        assert (await c.get("/varied", headers={"Accept": accept})).status == 200
        stored += 1
    for i in range(40):  # then enough others that the varied URL goes
        assert (await c.get(f"/other{i}", headers={"Accept": "a"})).status == 200
        stored += 1
    text = await (await c.get("/metrics")).text()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    entries = samples["cacheproxy_store_entries"]
    evictions = samples["cacheproxy_store_evictions_total"]
    assert not [k for k in await c.app_proxy.store.keys() if k.endswith("/varied")]
    assert any(k.endswith("/other39") for k in await c.app_proxy.store.keys())
    assert entries + evictions == stored, (entries, evictions, stored)


async def test_bytes_through_tunnels_and_websockets_are_in_metrics(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """What was wrong: a CONNECT tunnel's and a WebSocket's bytes (the log's bytes and
    bytes_in) were in no metric: cacheproxy_response_body_bytes_total counts what came
    from the cache or the origin's HTTP answers, so a forward proxy whose traffic is
    mostly https tunnels graphed almost no traffic at all. Squid counts tunnelled bytes
    in its client_http.kbytes_in/out; nginx's stream module in bytes_sent/received. Now
    cacheproxy_tunnel_bytes_total{direction="to_client"|"from_client"}, counted when the
    tunnel's log line is written (at its end). Severity: low."""
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(message.data * 2)
        return socket
    app = web.Application()
    app.router.add_get("/ws", ws)
    server, echo_port = await echo_server()
    try:
        c = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")},
                        forward={"enabled": True, "connect_ports": (echo_port,),
                                 "allow_hosts": ("127.0.0.1",)})
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                     % (echo_port, echo_port))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        async with c.session.ws_connect(c.make_url("/ws")) as socket:
            await socket.send_str("hi")
            assert (await socket.receive()).data == "hihi"
        tunnels: list[dict[str, Any]] = []
        deadline = time.monotonic() + 3
        while len(tunnels) < 2 and time.monotonic() < deadline:  # (each line at its end)
            tunnels = [line for line in await read_json_log(c) if line["cache"] == "TUNNEL"]
            await asyncio.sleep(0.02)
        assert len(tunnels) == 2, tunnels
        text = await (await c.get("/metrics")).text()
        samples = {(s.name, s.labels.get("direction")): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        out = samples[("cacheproxy_tunnel_bytes_total", "to_client")]
        back = samples[("cacheproxy_tunnel_bytes_total", "from_client")]
        assert out == sum(line["bytes"] for line in tunnels) and out > 4, tunnels
        assert back == sum(line["bytes_in"] for line in tunnels) and back > 4, tunnels
    finally:
        server.close()


async def test_every_cache_status_is_a_series_from_the_start_at_zero(
        origin: Any, proxy: Any) -> None:
    """What was wrong: a cacheproxy_requests_total series appeared only with the first
    request of its cache status, at 1. Prometheus' rate() and increase() need a sample
    before an increment, so that first request was never seen: the first ERROR after a
    start (or ever) raised no `increase(cacheproxy_requests_total{cache="ERROR"}[5m]) > 0`
    alert, and an error-ratio alert over absent series said "no data" rather than 0.
    Prometheus' instrumentation guide ("avoid missing metrics": export 0 for series known
    in advance). Now every cache status of the default route, and of each route once
    seen, is exported from the start at 0. Severity: medium (an alert that missed the
    first errors)."""
    c = await proxy(await origin(_tagged_origin()))

    async def requests() -> dict[str, float]:
        text = await (await c.get("/metrics")).text()
        return {s.labels["cache"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "cacheproxy_requests_total"
                and s.labels["route"] == "default"}

    assert await requests() == dict.fromkeys(CACHE_STATUSES, 0.0)
    assert (await c.get("/page")).status == 200
    assert await requests() == {**dict.fromkeys(CACHE_STATUSES, 0.0), "MISS": 1.0}


async def test_a_configured_routes_statuses_are_series_before_its_first_request(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """The companion of the test above for [[routes]]: each configured route's statuses
    are exported at 0 from the start, so its first request (its first ERROR) is an
    increase that rate() sees. Severity: medium."""
    site = SimpleNamespace(app=_tagged_origin())
    toml = ('[proxy]\nupstream = "{site}"\n'
            '[[routes]]\npath_prefix = "/api/"\nupstream = "{site}"\n')
    c = await proxy_for_toml(origin, proxy, tmp_path, toml, site=site)
    text = await (await c.get("/metrics")).text()
    series = {(s.labels["route"], s.labels["cache"]): s.value
              for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "cacheproxy_requests_total"}
    assert series == {(route, cache): 0.0 for route in ("default", "routes[0]")
                      for cache in CACHE_STATUSES}
    assert (await c.get("/api/x")).status == 200
    text = await (await c.get("/metrics")).text()
    assert 'cacheproxy_requests_total{cache="MISS",route="routes[0]"} 1.0' in text
