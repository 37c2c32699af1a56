"""Review "logtruth": does each request-log line tell the truth about its request?

Each line was compared with what the client got on the wire (raw sockets: status line,
fields, body bytes) and what the origin saw (an aiohttp origin counting its requests):
status, cache, bytes, total_ms / upstream_ms, upstream_status, age / ttl, collapsed,
route, policy, referer, user_agent and cache_status, in both formats, and `cacheproxy
logs`' figures for a known mix. Each defect's test failed on the code it was written
against (58bc087)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from support import echo_server, read_json_log

from cacheproxy.cli import main
from cacheproxy.proxy.server import OBSERVER


async def _exchange(port: int, data: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """One request written raw on a connection of its own (it says Connection: close):
    the status, the fields (lower-cased names, every value), the bytes after the head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    wire = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = wire.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split()[1]), fields, body


def _get(path: str, *fields: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: example.test",
                        "Connection: close", *fields, "", ""]).encode()


async def test_a_304_to_a_conditional_miss_is_marked_with_the_proxys_own_name(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """What was wrong: a conditional request (If-None-Match) for a URL not yet stored is
    sent upstream unconditionally; the response is stored and the client gets a 304 for
    its own validator (RFC 9111 §4.3.2). Building that 304, the loop that copies the
    origin's Set-Cookie reused the variable holding the cache's name, so the answer was
    marked with the name of the origin's last field: the client saw `Cache-Status: Server;
    fwd=uri-miss; ...` and `Via: 1.1 Server`, and the log's cache_status said the same.
    What a user saw: a browser revalidating its copy of a page the proxy had not yet
    stored (the first visit through a fresh proxy) got a Cache-Status member naming
    another cache (RFC 9211 §2: the member's name identifies the cache) and a Via naming
    a proxy that does not exist (RFC 9110 §7.6.3). Severity: medium (every such 304)."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("If-None-Match", "-"))
        return web.Response(text="a page", headers={"ETag": '"c"',
                                                    "Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")})
    status, fields, body = await _exchange(c.server.port, _get("/cond", 'If-None-Match: "c"'))
    assert (status, body) == (304, b"")
    assert seen == ["-"]  # sent upstream unconditionally, once
    member = fields["cache-status"][-1]
    assert member.startswith("cacheproxy; fwd=uri-miss; fwd-status=200; stored; ttl="), member
    assert fields["via"] == ["1.1 cacheproxy"]
    [line] = await read_json_log(c)
    assert (line["status"], line["cache"], line["bytes"]) == (304, "MISS", 0)
    assert line["upstream_status"] == 200 and line["cache_status"] == member


async def test_a_request_head_cut_at_client_header_timeout_is_logged_408(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """What was wrong: a client that began a request head and did not finish it within
    `proxy.client_header_timeout` had its connection closed and no line written, while
    the README promises one line per request, the parser's refusals (400, 414, 431)
    included. What a user saw: slow-header clients (slowloris, a client stuck mid-head
    on a bad network) were invisible in the request log and in `cacheproxy logs`, their
    connections held for the whole timeout all the same. nginx closes without an answer
    and logs the request as 408 with 0 bytes (its client_header_timeout), with the request
    line when it was read whole, "-" when not. A connection that sends nothing writes no
    line, in nginx and here. Severity: low (an operator's blind spot)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="a page", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")},
                    proxy={"client_header_timeout": 0.2})
    whole = b"GET /whole HTTP/1.1\r\nHost: example.test\r\n\r\n"
    answers = []
    # (the last: a head begun in the same read as a whole request before it)
    for head in (b"GET /slow?sid=1 HTTP/1.1\r\nHost: exa", b"GE", b"",
                 whole + b"HEAD /next HTTP/1.1\r\nHo"):
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(head)
        answers.append(await asyncio.wait_for(reader.read(), 10))
        writer.close()
    assert answers[:3] == [b"", b"", b""]  # closed, nothing sent
    assert answers[3].startswith(b"HTTP/1.1 200 ") and answers[3].count(b"HTTP/1.1") == 1
    lines = await read_json_log(c)
    assert [(r["method"], r["path"], r["protocol"], r["status"], r["cache"], r["bytes"])
            for r in lines] == [("GET", "/slow", "HTTP/1.1", 408, "ERROR", 0),
                                ("-", "-", "-", 408, "ERROR", 0),
                                ("GET", "/whole", "HTTP/1.1", 200, "MISS", 6),
                                ("HEAD", "/next", "HTTP/1.1", 408, "ERROR", 0)]
    assert all(0.2 <= r["total_ms"] / 1000 < 10 for r in lines if r["status"] == 408)


async def test_an_admin_calls_referer_is_redacted_as_every_other_lines(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """What was wrong: the request log redacts the values of `referer.strip_params` in a
    line's Referer (README, "Referer: hotlink protection and leaks": "so a session id
    kept from the upstream is not written to a log file either"), but the lines of the
    calls the admin API, the health checks and /metrics answered wrote their Referer as
    it came. What a user saw: a page of a proxied site whose URL holds a session id
    (`/cart?ticket=...`) linking to the proxy's health check or stats, or a monitoring
    tool following such a link, put that session id in clear in the request log, where
    every other line shows `ticket=REDACTED`. Severity: low (a secret in a log file that
    promises its redaction)."""
    log = tmp_path / "requests.log"
    c = await proxy(await origin(web.Application()), log={"path": str(log)},
                    referer={"strip_params": ["ticket"]})
    referer = "Referer: http://shop.example/cart?ticket=s3cr3t&x=1"
    for target in ("/_cacheproxy/healthz", "/_cacheproxy/stats", "/_cacheproxy/nothing",
                   "/metrics"):
        status, _, _ = await _exchange(c.server.port, _get(target, referer))
        assert status in (200, 403, 404)  # (stats: a foreign page's call is refused)
    lines = await read_json_log(c)
    assert [r["route"] for r in lines] == ["admin"] * 4
    assert {r["referer"] for r in lines} == {"http://shop.example/cart?ticket=REDACTED&x=1"}
    assert "s3cr3t" not in log.read_text()


def _mix_origin(seen: dict[str, int]) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        path = request.path
        seen[path] = seen.get(path, 0) + 1
        if path == "/reval":  # stale at once: each later request revalidates (304)
            if request.headers.get("If-None-Match") == '"r"':
                return web.Response(status=304, headers={"ETag": '"r"',
                                                         "Cache-Control": "max-age=0"})
            return web.Response(body=b"r" * 100, headers={"ETag": '"r"',
                                                          "Cache-Control": "max-age=0"})
        return web.Response(body=b"h" * 1000, headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_logs_and_stats_count_only_the_origins_bodies_as_from_the_origin(
        origin: Any, proxy: Any, tmp_path: Any, capsys: Any, fmt: str) -> None:
    """What was wrong: "bytes from the origin" (`cacheproxy logs`, the stats API's
    bytes_from_origin, /metrics' `source="origin"`) summed the bodies of every BYPASS
    line, those the proxy made itself included: a PURGE's JSON answer and a CORS
    preflight's were counted as fetched from the origin, which never saw them, and the
    purged URLs rose in "top URLs by bytes from the origin". What a user saw: after a
    deploy that purges its URLs, the origin's share of bytes and the URLs said to cost
    the origin most grew by answers the origin never sent. A known mix is driven here
    (3 misses, 6 hits, a HEAD hit, a miss then 2 revalidations, a POST, a PURGE, a
    preflight, an admin call) and every figure compared with what the client received
    and the origin sent. Severity: low (the figures an operator sizes the origin by)."""
    seen: dict[str, int] = {}
    log = tmp_path / "requests.log"
    c = await proxy(await origin(_mix_origin(seen)), log={"path": str(log), "format": fmt},
                    cors={"allow_origins": ["https://app.example"]})
    got = 0  # body bytes the client received
    for path in ("/a", "/b", "/c", "/a", "/a", "/b", "/b", "/c", "/c",
                 "/reval", "/reval", "/reval"):
        got += len(await (await c.get(path)).read())
    got += len(await (await c.head("/a")).read())
    got += len(await (await c.post("/form", data=b"x")).read())  # passed by (BYPASS)
    purged = await c.request("PURGE", "/b")  # answered by the proxy, BYPASS too
    purge_body = await purged.read()
    assert purged.status == 200 and purge_body
    got += len(purge_body)
    preflight = await c.options("/a", headers={"Origin": "https://app.example",
                                               "Access-Control-Request-Method": "GET"})
    assert preflight.status == 204
    stats = await (await c.get("/_cacheproxy/stats")).json()  # an admin call: not traffic
    assert seen == {"/a": 1, "/b": 1, "/c": 1, "/reval": 3, "/form": 1}
    origin_bodies = 3 * 1000 + 100 + 1000  # the misses, the first /reval, the POST's
    from_cache = 6 * 1000 + 2 * 100  # the hits, the revalidated (the HEAD: no body)
    c.server.app[OBSERVER].flush()
    assert await asyncio.to_thread(c.server.app[OBSERVER].sink.wait_written)
    assert main(["logs", str(log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lines"] == {"read": 17, "malformed": 0, "filtered_out": 0, "admin": 1}
    assert report["requests"] == stats["requests"] == 16
    assert {k: v for k, v in report["cache"].items() if v} == {
        "HIT": 7, "MISS": 4, "REVALIDATED": 2, "BYPASS": 3}
    assert report["bytes"] == {"sent": got, "from_cache": from_cache,
                               "from_origin": origin_bodies, "saved": from_cache,
                               "other": len(purge_body), "tunnels": 0}
    assert (stats["bytes_from_cache"], stats["bytes_from_origin"]) == (from_cache,
                                                                       origin_bodies)
    assert report["hit_ratio"]["requests"] == round(9 / 16, 6)
    assert report["hit_ratio"]["bytes"] == round(from_cache / got, 6)
    assert {item["url"].split("/", 1)[1]: item["bytes"]
            for item in report["top"]["by_origin_bytes"]} == {
        "a": 1000, "b": 1000, "c": 1000, "form": 1000, "reval": 100}
    assert sorted(item["url"].split("/", 1)[1] for item in report["top"]["by_misses"]) == \
        ["a", "b", "c", "reval"]


async def test_a_range_cut_from_a_miss_is_marked_with_the_proxys_own_name(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """What was wrong: a Range request for a URL not yet stored is fetched whole (to be
    stored) and the client's range cut from it as it streams (RFC 9110 §15.3.7). Removing
    the fields a part does not carry, the loop reused the variable holding the cache's
    name, so the 206 was marked with the last of them: the client saw `Cache-Status:
    Content-MD5; fwd=uri-miss; ...` and `Via: 1.1 Content-MD5`, and the log's cache_status
    said the same. What a user saw: the first range request of a video or a download
    through the proxy (a player's `Range: bytes=0-`) named a cache that does not exist
    (RFC 9211 §2; RFC 9110 §7.6.3). Severity: medium (every such 206)."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range", "-"))
        return web.Response(body=b"0123456789", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")})
    status, fields, body = await _exchange(c.server.port, _get("/video", "Range: bytes=2-5"))
    assert (status, body, fields["content-range"]) == (206, b"2345", ["bytes 2-5/10"])
    assert seen == ["-"]  # fetched whole, once
    member = fields["cache-status"][-1]
    assert member.startswith("cacheproxy; fwd=uri-miss; fwd-status=200; stored; ttl="), member
    assert fields["via"] == ["1.1 cacheproxy"]
    [line] = await read_json_log(c)
    assert (line["status"], line["cache"], line["bytes"]) == (206, "MISS", 4)
    assert line["upstream_status"] == 200 and line["cache_status"] == member


async def test_a_request_head_its_client_closed_midway_is_logged_400(
        origin: Any, proxy: Any, tmp_path: Any) -> None:
    """What was wrong: a client that began a request head and closed its connection
    before finishing it (a crashed or killed client, a scanner, a load balancer's probe
    writing half a request) left no line, though the README promises one per request.
    nginx logs it 400 with 0 bytes ("client prematurely closed connection while reading
    client request headers"), with the request line when it was read whole, "-" when
    not; a connection that sends no byte of a head (nothing, or only empty lines, RFC
    9112 §2.2) writes none. What a user saw: such clients missing from the log and from
    `cacheproxy logs`. Severity: low (an operator's blind spot)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="a page", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    c = await proxy(await origin(app), log={"path": str(tmp_path / "requests.log")})
    whole = b"GET /whole HTTP/1.1\r\nHost: example.test\r\n\r\n"
    answers = []
    for head in (b"GET /half?sid=1 HTTP/1.1\r\nHost: exa", b"GE", b"", b"\r\n",
                 whole + b"HEAD /next HTTP/1.1\r\nHo"):
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(head)
        if head.startswith(whole):  # its answer first: the next head is cut after it
            answers.append(await reader.readuntil(b"a page"))
        writer.write_eof()  # closed (a FIN after a head not whole: the client is gone)
        answers.append(await asyncio.wait_for(reader.read(), 10))
        writer.close()
    assert answers[:4] == [b"", b"", b"", b""]  # nothing sent
    assert answers[4].startswith(b"HTTP/1.1 200 ") and answers[5] == b""
    lines = await read_json_log(c)
    assert [(r["method"], r["path"], r["protocol"], r["status"], r["cache"], r["bytes"])
            for r in lines] == [("GET", "/half", "HTTP/1.1", 400, "ERROR", 0),
                                ("-", "-", "-", 400, "ERROR", 0),
                                ("GET", "/whole", "HTTP/1.1", 200, "MISS", 6),
                                ("HEAD", "/next", "HTTP/1.1", 400, "ERROR", 0)]


async def test_logs_reports_tunnel_bytes_as_tunnels_not_as_errors_or_refusals(
        origin: Any, proxy: Any, tmp_path: Any, capsys: Any) -> None:
    """What was wrong: `cacheproxy logs` put the bytes a `CONNECT` tunnel (forward mode)
    carried to its client with the proxy's own error and refusal answers, and its report
    says them "errors/denied". What a user saw: a browser's HTTPS traffic through the
    proxy, none of it refused, reported as megabytes of errors and refusals (the
    dashboard and the hit ratio rightly call a tunnel neither a hit, a miss nor an error:
    README, "What the log shows"). They are now reported apart, as tunnels; they stay in
    "bytes sent", the whole the byte hit ratio is taken of, as in the stats API.
    Severity: low (a misleading figure)."""
    server, port = await echo_server()
    try:
        log = tmp_path / "requests.log"
        c = await proxy(await origin(web.Application()), log={"path": str(log)},
                        forward={"enabled": True, "connect_ports": [port]})
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                     .encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"t" * 30000)
        assert await reader.readexactly(30000) == b"t" * 30000  # (echoed)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await _exchange(c.server.port, _get("/_cacheproxy/nothing"))  # (not traffic)
        c.server.app[OBSERVER].flush()
        assert await asyncio.to_thread(c.server.app[OBSERVER].sink.wait_written)
    finally:
        server.close()
    [line, _] = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["cache"], line["bytes"], line["bytes_in"]) == ("TUNNEL", 30000, 30000)
    assert main(["logs", str(log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == {"sent": 30000, "from_cache": 0, "from_origin": 0, "other": 0,
                               "tunnels": 30000, "saved": 0}
    assert main(["logs", str(log)]) == 0
    sent_line = next(x for x in capsys.readouterr().out.splitlines()
                     if x.startswith("bytes sent"))
    assert "errors/denied 0 B, tunnels 29.3 KiB" in sent_line, sent_line
