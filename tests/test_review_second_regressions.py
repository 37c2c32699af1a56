"""Defects found by a second reader of the day's commits: each test failed before its fix
(or is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop

TIMEOUT = 5.0


async def _counting_origin(origin, proxy, **sections):  # type: ignore[no-untyped-def]
    """An origin answering /a with the length of the request's body; the proxy in front."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"{len(await request.read())}")

    app = web.Application()
    app.router.add_route("*", "/a", page)
    return await proxy(await origin(app), **sections)


# -- the 64 KiB request-head bound (314aa0d) -----------------------------------------------


async def test_a_head_begun_in_the_read_that_ended_a_request_is_bounded_too(origin, proxy):
    """The head bound is skipped for a head whose first bytes arrive in the same read as a
    whole pipelined request: that read resets the count to 0 without counting the
    unfinished head it also carries, and the read that ends the head is measured only when
    it is itself large. So 'GET /a' + 96 KB of the next head, then its final CRLF, gets
    the 96 KB head served (200), where sent alone it gets 431. The bound is what keeps a
    connection from holding ~1 MB of head (Squid's request_header_max_size answers it 431
    whatever came before it on the connection). Severity: low (a resource bound that a
    pipelining client steps around; the per-field and field-count bounds still hold)."""
    client = await _counting_origin(origin, proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    fields = "".join(f"X-{n}: {'v' * 8000}\r\n" for n in range(12))  # ~96 KB
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                 + f"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{fields}".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"\r\n")
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    # The request before it is answered; the oversized one is refused, not served.
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:100]
    assert answer.count(b"HTTP/1.1 200 OK") == 1, answer[:400]
    assert b"HTTP/1.1 431 " in answer, answer[:400]


async def test_requests_before_an_oversized_head_are_still_checked(origin, proxy):
    """A head over the bound in the same read as whole requests sets _closing before
    _read_last runs, and _read_last runs only when not closing: the requests before the
    431 skip its checks. A POST with an empty Transfer-Encoding beside Content-Length
    (400 since 218ddf3, RFC 9112 §6.3 item 4: its length is unknown; nginx and Squid
    refuse it) then went to the origin with a Content-Length body (200, '5'), the
    framing disagreement request smuggling is made of behind another front. So would a
    'gzip, chunked' body (501) or an HTTP/0.9 line (505). Severity: medium (a refusal
    made for safety skipped whenever an oversized head follows in the same read)."""
    client = await _counting_origin(origin, proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    fields = "".join(f"X-{n}: {'v' * 8000}\r\n" for n in range(9))  # ~72 KB
    writer.write(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n"
                 b"Content-Length: 5\r\n\r\nhello"
                 + f"GET /a HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]


# -- HTTP/1.1 status lines to HTTP/1.0 clients (b567549) ------------------------------------


async def _exchange_10(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    return answer


async def test_the_control_plane_says_close_to_an_http10_client_it_answers_as_11(
        origin, proxy):
    """Since b567549 the control plane's status line says HTTP/1.1 to an HTTP/1.0
    request, but aiohttp still frames it as 1.0, where close is the default and goes
    unsaid: 'HTTP/1.1 200 OK' without 'Connection: close', then the close. A client
    reads persistence from the version it received (RFC 9112 §9.3: HTTP/1.1 persists
    unless 'close' is sent); the data plane says 'Connection: close' in that case, and so
    does nginx ('HTTP/1.1 200 OK ... Connection: close' to a GET / HTTP/1.0, run here).
    Severity: low (a client may reuse a connection the proxy is closing)."""
    client = await _counting_origin(origin, proxy)
    for target in (b"/_cacheproxy/healthz", b"/metrics", b"/_cacheproxy/nothing"):
        answer = await _exchange_10(client.server.port,
                                    b"GET " + target + b" HTTP/1.0\r\nHost: a\r\n\r\n")
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 "), head
        assert b"\r\nconnection: close" in head, (target, head)
    data_plane = await _exchange_10(client.server.port, b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n")
    assert b"\r\nConnection: close" in data_plane.split(b"\r\n\r\n", 1)[0]


async def test_a_head_over_the_bound_behind_pipelined_requests_gets_its_431(origin, proxy):
    """README: a head over 64 KiB gets 431 as soon as it passes that. Behind a request
    read in the same feed it got none: the bound set _closing, so the request before it
    was answered with Connection: close and the connection closed with the 431 still
    queued (the client learns nothing of why its second request went unanswered). nginx
    answers the first, then its 400 'Request Header Or Cookie Too Large'. Severity: low."""
    client = await _counting_origin(origin, proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    fields = "".join(f"X-{n}: {'v' * 8000}\r\n" for n in range(9))  # ~72 KB
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                 + f"GET /a HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK"), answer[:300]
    assert b"Connection: close" not in first, first
    assert b"HTTP/1.1 431 " in rest, answer[:600]


async def test_admin_listen_says_http11_to_http10_requests_too(origin, tmp_path):
    """b567549 made every status line say HTTP/1.1, the server's version, to HTTP/1.0
    requests (README: 'An HTTP/1.0 request's status line says HTTP/1.1 too, as nginx and
    Squid answer'), on proxy.listen's data and control planes; with admin.listen set, the
    admin API, /metrics and the health checks are served by aiohttp's own server there,
    which still answers 'HTTP/1.0 200 OK'. One server, two versions (RFC 9110 §6.2: the
    server's own version is sent). Severity: low."""
    admin = free_port()
    env = clean_env(CACHEPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin}")
    proc, _ = await start_serve("--upstream", "http://127.0.0.1:9", cwd=tmp_path, env=env)
    try:
        for _ in range(100):
            try:
                answer = await _exchange_10(
                    admin, b"GET /_cacheproxy/healthz HTTP/1.0\r\nHost: a\r\n\r\n")
                break
            except OSError:
                await asyncio.sleep(0.05)
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"\r\nConnection: close" in head, head
    finally:
        await stop(proc)


# -- the 400 of a target refused before the cache (21354df, dc8940d) ------------------------


async def test_a_target_refused_before_the_cache_carries_no_cache_status(origin, proxy):
    """README (dc8940d): 'Those refused before the cache (400, 414, 431, ...) carry
    neither' Cache-Status nor X-Cache. The 400 the handler makes for a target whose dot
    segments climb above the root (new in 21354df), an invalid Host or userinfo in the
    target carried 'Cache-Status: cacheproxy' and 'X-Cache: MISS': no lookup was made,
    and a MISS says the origin was asked, where the request log says ERROR. The parser's
    400s (an empty Transfer-Encoding) carry neither. Severity: low."""
    client = await _counting_origin(origin, proxy)
    for request in (b"GET /../a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    b"GET /a/%2e%2e/%2e%2e/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    b"GET /a HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
                    b"GET http://u@a/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 400 "), head
        assert b"\r\ncache-status:" not in head and b"\r\nx-cache:" not in head, head


# -- collapsing behind a leader that got no whole answer (bc3fde7, 29d0cbc) ---------------


@pytest.mark.parametrize("leader", [{"Range": "bytes=0-9"}, {"If-None-Match": '"v1"'}])
async def test_waiters_behind_a_leader_whose_fill_broke_off_go_one_at_a_time(
        origin, proxy, leader):
    """A Range miss fills the whole response first (Driver._perform's whole_first), and a
    miss whose own validators match the answer is sent a 304 once the body is stored
    (Exchange.not_modified): both release their waiters in a `finally` with failed=False.
    When that fill breaks off (the origin's connection cut mid-body), the waiters are
    woken as if it had stored (note_stored ran at the decision), find nothing, and all
    go upstream at once: the herd bc3fde7 keeps from every other failed leader (README:
    'When the request they wait for gets no whole answer (... its body cut short), they
    do not all go upstream at once: one tries again and the others wait for it'). nginx's
    proxy_cache_lock holds them likewise. Severity: medium (an origin that just failed
    gets every waiter)."""
    calls = [0]

    async def page(request: web.Request) -> web.StreamResponse:
        calls[0] += 1
        fields = {"Cache-Control": "max-age=60", "ETag": '"v1"'}
        if calls[0] == 1:  # the leader's: half the body, then the connection cut
            resp = web.StreamResponse(headers={**fields, "Content-Length": "20000"})
            await resp.prepare(request)
            await resp.write(b"a" * 10000)
            await asyncio.sleep(0.4)
            assert request.transport is not None
            request.transport.abort()
            return resp
        await asyncio.sleep(0.1)
        return web.Response(body=b"b" * 20000, headers=fields)

    app = web.Application()
    app.router.add_get("/r", page)
    client = await proxy(await origin(app))
    first = asyncio.ensure_future(client.get("/r", headers=leader))
    for _ in range(100):
        if calls[0]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    waiters = [asyncio.ensure_future(client.get("/r")) for _ in range(4)]
    await (await first).read()
    answers = await asyncio.gather(*waiters)
    assert [r.status for r in answers] == [200] * 4
    assert calls[0] == 2, calls  # the leader's try, and one more


# -- CORS off: an upstream grant naming an origin varies on it (4074a9e) -----------------


async def test_with_cors_off_a_grant_naming_an_origin_is_sent_with_vary_origin_on_a_miss(
        origin, proxy):
    """README: with CORS off 'an upstream grant that names an origin is stored and sent
    with Vary: Origin'. 4074a9e adds it to what is stored, so hits carry it, but the
    miss that stores it (and any answer passed on unstored) goes out without it, where
    passthrough mode adds it on the way out too (policies/cors.outbound: 'which a cache
    further on must be told'). The browser's cache, or a CDN in front, then keeps
    https://a.example's grant without Vary and replays it to https://b.example (Fetch
    §3.2, CORS protocol and HTTP caches): the poisoning the commit fixed, one hop
    further on. Severity: medium."""
    async def page(request: web.Request) -> web.Response:
        fields = {"Cache-Control": request.query.get("cc", "max-age=60")}
        if "Origin" in request.headers:  # an origin that echoes Origin without Vary
            fields["Access-Control-Allow-Origin"] = request.headers["Origin"]
        return web.Response(text="data", headers=fields)

    app = web.Application()
    app.router.add_get("/a", page)
    client = await proxy(await origin(app))
    for query in ("", "?cc=no-store"):  # stored on its way, and passed on unstored
        miss = await client.get("/a" + query, headers={"Origin": "https://a.example"})
        assert miss.headers.get("X-Cache") == "MISS"
        assert miss.headers["Access-Control-Allow-Origin"] == "https://a.example"
        assert "origin" in miss.headers.get("Vary", "").lower(), (query, dict(miss.headers))
    hit = await client.get("/a", headers={"Origin": "https://a.example"})
    assert hit.headers.get("X-Cache") == "HIT" and "Origin" in hit.headers.get("Vary", "")


# -- dot segments as the origins read them (21354df) ----------------------------------------


@pytest.mark.parametrize("path", ["/x/../images/a.png",  # (the control: refused today)
                                  "/x/..;/images/a.png", "/x/..;jsessionid=1/images/a.png",
                                  "/x/..%5Cimages/a.png"])
async def test_hotlink_protection_reads_dot_segments_as_the_refusal_does(
        origin, proxy, path):
    """21354df refuses a target climbing above the root counting '..;x' as '..' (Tomcat)
    and '\\' as '/' (IIS), 'the check refuses more, never less'. The path that routes
    and referer.protect_paths match against (config.entries.normalize_path) does not:
    '/x/..;/images/a.png' is outside '/images/' to the hotlink gate, and Tomcat serves
    it as /images/a.png (the '..;' path-parameter traversal, Orange Tsai, Black Hat
    2018), so a foreign page hotlinks what '/x/../images/a.png' is refused. The same
    spelling reaches another route's upstream. Severity: medium (a policy bypass on
    Tomcat or IIS origins)."""
    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"png", content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", image)
    client = await proxy(await origin(app), referer={
        "protect_paths": ["/images/"], "valid_referers": ["none", "server_names"]})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\nReferer: https://evil.example/\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]


# -- Surrogate-Control that says nothing about storing here (12fa7a6) ----------------------


@pytest.mark.parametrize("surrogate", ['content="ESI/1.0", esi-inline',
                                       'content="ESI/1.0", x-cdn-tag=home'])
async def test_a_surrogate_control_of_unknown_extensions_keeps_a_private_page_private(
        origin, proxy, surrogate):
    """12fa7a6: a Surrogate-Control carrying only content="ESI/1.0" or no-store-remote
    no longer sets Cache-Control aside, 'neither directive says how this cache may store
    the response'. Nor does an extension this cache does not know (RFC 9111 §5.2.3: an
    unrecognised directive is ignored), yet one beside content="ESI/1.0" counted as a
    caching directive: the page's 'Cache-Control: private, no-store' was set aside and it
    was stored by heuristic freshness and served to the next user, the leak that commit
    fixed. Severity: medium (needs an origin that adds such an extension)."""
    calls = [0]

    async def page(request: web.Request) -> web.Response:
        calls[0] += 1
        return web.Response(text="account of " + request.headers.get("Cookie", "nobody"),
                            headers={"Cache-Control": "private, no-store",
                                     "Surrogate-Control": surrogate,
                                     "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})

    app = web.Application()
    app.router.add_get("/account", page)
    client = await proxy(await origin(app))
    alice = await client.get("/account", headers={"Cookie": "sid=alice"})
    assert await alice.text() == "account of sid=alice"
    other = await client.get("/account")
    assert await other.text() == "account of nobody"
    assert calls[0] == 2


async def test_waiters_behind_a_failed_leader_get_the_stale_if_error_answer_it_got(
        origin, proxy):
    """A stored response with stale-if-error, an origin that fails each request after
    0.3 s: the leader's revalidation fails and it is answered stale (RFC 5861 §4). Since
    bc3fde7 its waiters do not take that failure as theirs: one by one each tries the
    failing origin again, behind the previous one, so 4 requests are answered at 0.6,
    0.9, 1.2 and 1.5 s (each after its own failed try; before bc3fde7, all at 0.9 s),
    with as many upstream attempts as before. The leader's failure is the cache's error
    too: the stored response usable on error answers the waiters at once, as Varnish's
    grace and nginx's proxy_cache_use_stale do. Severity: low (latency that grows with
    the waiters while the origin is down, within collapse_timeout)."""
    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # the connection reset
        await asyncio.sleep(1)
        raise AssertionError("not answered")

    answers, calls = await stale_waiters(origin, proxy, reset)
    assert all(status == 200 and body == "v1" and "stale-if-error" in cs
               for status, body, cs in answers), answers
    assert sum("collapsed" in cs for _, _, cs in answers) == 3, answers
    assert calls <= 2, calls  # the leader's try (and the pool's one retry), no more


async def stale_waiters(
    origin: Any, proxy: Any, fail: Callable[[web.Request], Awaitable[web.Response]],
) -> tuple[list[tuple[int, str, str]], int]:
    """A response stored with stale-if-error, then an origin whose every answer is
    fail's after 0.3 s; 4 concurrent requests for it: their (status, body, Cache-Status),
    and how many requests reached the origin meanwhile."""
    calls = [0]
    down = [False]

    async def page(request: web.Request) -> web.Response:
        calls[0] += 1
        if down[0]:
            await asyncio.sleep(0.3)
            return await fail(request)
        return web.Response(text="v1", headers={
            "Cache-Control": "max-age=1, stale-if-error=600", "ETag": '"1"'})

    app = web.Application()
    app.router.add_get("/r", page)
    client = await proxy(await origin(app))
    assert (await client.get("/r")).status == 200
    await asyncio.sleep(1.2)
    down[0], calls[0] = True, 0

    async def one() -> tuple[int, str, str]:
        resp = await client.get("/r")
        return resp.status, await resp.text(), resp.headers.get("Cache-Status", "")

    answers = await asyncio.gather(*[one() for _ in range(4)])
    return list(answers), calls[0]


async def test_the_head_bound_holds_on_a_connection_read_by_the_python_parser(
        origin, proxy):
    """A method llhttp rejects (any token is a method, RFC 9110 §9.1) switches the
    connection to aiohttp's Python parser (server_protocol._FallbackParser). That parser
    keeps an unfinished head in its _tail, which its `holding` reports, and the head
    bound (314aa0d) resets its count whenever the parser is holding: on such a
    connection a head trickled past 64 KiB is never refused, and ~1 MB of head is held
    again, what the bound was made to stop. Severity: medium (a resource bound bypassed
    by any client that sends one request with an unusual method first)."""
    client = await _counting_origin(origin, proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"FOO /a HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert first.startswith(b"HTTP/1.1 200 "), first
    await asyncio.wait_for(reader.readexactly(1), TIMEOUT)  # its body: "0"
    writer.write(b"GET /a HTTP/1.1\r\nHost: a")
    for n in range(10):  # 80 KB of fields, in pieces each ending mid-line; no end
        writer.write(f"\r\nX-{n}: {'v' * 8000}".encode())
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
