"""A documentation review: what README.md promises, checked against the running proxy.
Each test names the README's words, what the proxy did instead, why it matters and how
much (high / medium / low)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from test_observe_regressions import origin_app, read_log


async def log_records(client: Any, path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await read_log(client, path)]


async def test_only_if_cached_504_is_logged_as_the_proxys_own_error(origin, proxy, tmp_path):
    """README, the request log's `cache` field: "`ERROR` (502/504/400 made by the proxy)";
    `MISS` is a response fetched and not stored, whose body counts as "bytes from the
    origin" (stats, `cacheproxy_response_body_bytes_total{source="origin"}`, `cacheproxy
    logs`). A request with `Cache-Control: only-if-cached` and nothing stored gets the
    proxy's own 504 (RFC 9111 §5.2.1.7) without any request upstream, yet it was logged
    `"cache": "MISS"`: its error text was counted as bytes from the origin, the request
    as a miss in the hit ratio and miss latency, and `cacheproxy_errors_total` did not
    move, unlike the same 504 under must-revalidate (logged ERROR). Severity: low
    (misleading figures for operators)."""
    log = tmp_path / "requests.log"
    c = await proxy(await origin(origin_app()), log={"path": str(log)})
    resp = await c.get("/nothing", headers={"Cache-Control": "only-if-cached"})
    assert resp.status == 504
    await resp.read()
    [record] = await log_records(c, log)
    assert record["upstream_status"] is None  # nothing went upstream
    assert record["cache"] == "ERROR"
    stats = await (await c.get("/_cacheproxy/stats")).json()
    assert (stats["errors"], stats["bytes_from_origin"]) == (1, 0)


async def test_metrics_path_is_never_forwarded_whatever_the_method(origin, proxy):
    """README: `admin.metrics_path` is the Prometheus endpoint, and `""` "turns it off and
    forwards that path to the origin"; an admin endpoint "asked with another method gets
    **405** with `Allow`". Only GET and HEAD of /metrics were the proxy's: a POST, PUT or
    DELETE of /metrics went to the origin (and, as an unsafe method, invalidated what the
    cache held for it), so one path was answered by two different servers depending on
    the method. nginx's stub_status answers 405 to anything but GET and HEAD. Severity:
    low (a surprise for an origin that serves /metrics of its own, and for operators)."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(text="origin's own")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    c = await proxy(await origin(app))
    for method in ("POST", "PUT", "DELETE"):
        resp = await c.request(method, "/metrics")
        assert resp.status == 405, method
        assert resp.headers["Allow"] == "GET, HEAD"
    assert seen == []
    assert (await c.get("/metrics")).status == 200


async def send_raw(client: Any, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_a_stalled_or_broken_request_body_is_logged_as_the_proxys_error(
        origin, proxy, tmp_path):
    """README, the request log's `cache` field: "`ERROR` (502/504/400 made by the proxy)",
    and `proxy.client_body_timeout`: a client that sends nothing of its body for that
    long "gets **408**"; a chunked body that breaks its framing mid-way "gets **400** at
    once". Both answers are the proxy's own, like the 400 of a malformed request head
    (logged ERROR, as the broken body's 400 already was), yet the 408 was logged
    `"cache": "BYPASS"`: its text counted as "bytes from the origin" (stats, /metrics,
    `cacheproxy logs`), and `cacheproxy_errors_total` missed it. Severity: low
    (misleading figures)."""
    async def sink(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="read", headers={"Cache-Control": "no-store"})
    app = web.Application()
    app.router.add_post("/{tail:.*}", sink)
    log = tmp_path / "requests.log"
    c = await proxy(await origin(app), proxy={"client_body_timeout": 0.3},
                    log={"path": str(log)})
    stalled = await send_raw(c, b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Content-Length: 10\r\n\r\nab")
    assert stalled.startswith(b"HTTP/1.1 408 ")
    broken = await send_raw(c, b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n")
    assert broken.startswith(b"HTTP/1.1 400 ")
    records = await log_records(c, log)
    assert [(r["status"], r["cache"]) for r in records] == [(408, "ERROR"), (400, "ERROR")]
    stats = await (await c.get("/_cacheproxy/stats")).json()
    assert (stats["errors"], stats["bytes_from_origin"]) == (2, 0)


async def test_an_http_1_0_request_is_answered_with_the_servers_own_version(origin, proxy):
    """README (Client connections): a request saying a version above 1.1 "is answered as
    `HTTP/1.1`, the highest version this server conforms to (RFC 9110 §6.2)". §6.2 says
    the same for lower versions: "A server SHOULD send a response version equal to the
    highest version to which the server is conformant that has a major version less than
    or equal to the one received in the request", i.e. HTTP/1.1 to an HTTP/1.0 request
    (framed for a 1.0 client all the same). The proxy echoes `HTTP/1.0` in the status
    line, on a miss, a hit and an admin answer; nginx answers `HTTP/1.1 200 OK` to the
    same request. Severity: low (clients take either)."""
    c = await proxy(await origin(origin_app()))
    for path in ("/v10", "/v10", "/_cacheproxy/healthz"):
        answer = await send_raw(c, f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 200 "), (path, answer[:20])
