"""Defects found reviewing the proxy in a chain of caches (a cache in front of it, another
behind it, two `cacheproxy serve` processes in a row): each test failed before its fix (or
is marked xfail, strict, with the reason it stays)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop

TIMEOUT = aiohttp.ClientTimeout(total=20)


async def _counting_origin(origin: object, headers: dict[str, str]
                           ) -> tuple[str, list[web.Request]]:
    """An origin answering every request with headers; the requests it saw."""
    seen: list[web.Request] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text=f"n={len(seen)}", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await origin(app)  # type: ignore[operator]
    return str(server.make_url("")).rstrip("/"), seen


async def _raw(port: int, request: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The status and fields of the answer to request (bytes as sent): read raw, since an
    answer that went round a loop carries more fields than aiohttp's client accepts."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)).decode("latin-1")
    finally:
        writer.close()
    status, *lines = head.strip().split("\r\n")
    return int(status.split()[1]), [(k.strip().lower(), v.strip()) for k, _, v in
                                     (line.partition(":") for line in lines)]


# -- Via: a chain that loops back into the proxy ends ------------------------------------


async def test_a_reverse_chain_that_loops_back_into_the_proxy_ends_with_508(tmp_path: Path
                                                                           ) -> None:
    """A proxy whose upstream leads back to itself (`proxy.upstream` set to its own
    address, or two proxies pointed at each other) forwarded each request to itself again
    and again: nothing in the request told it the request had already passed it. A POST
    (never collapsed) went round until every one of `proxy.max_connections` was taken,
    each hop a client connection and an upstream one, and only then got a 503; meanwhile
    every other request to that upstream found the pool full. RFC 9110 §7.6.3: Via is
    there "for avoiding request loops"; Squid refuses a request whose Via already names
    it ("Forwarding loop detected"), and RFC 5842 §7.2 gives 508 (Loop Detected), the
    status forward mode already answers for a target that is the proxy itself. Two
    instances in a row under the same default pseudonym (`cacheproxy`) are a chain, not a
    loop: a request that names this proxy's pseudonym a few times more than any real chain
    would is. Severity: medium (a misconfiguration turns one request into a pool-wide
    outage instead of a clear error)."""
    port = free_port()
    env = clean_env(CACHEPROXY_PROXY_MAX_CONNECTIONS="64", CACHEPROXY_PROXY_CONNECT_TIMEOUT="2")
    proc, _ = await start_serve("--upstream", f"http://127.0.0.1:{port}", cwd=tmp_path,
                                env=env, port=port)
    try:
        began = time.monotonic()
        status, fields = await _raw(port, b"POST /loop HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                          b"Content-Length: 1\r\n\r\nx")
        vias = [v for k, v in fields if k == "via"]
        assert status == 508, f"got {status} after {time.monotonic() - began:.1f}s, " \
                              f"{len(vias)} hops"
        assert len(vias) <= 16, f"{len(vias)} hops before it ended"
        # A GET, which collapses: each hop waited behind its own earlier one (the same
        # key, this process) for collapse_timeout, some 80 s in all before the 508.
        began = time.monotonic()
        status, _ = await _raw(port, b"GET /loop HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 508 and time.monotonic() - began < 5, \
            f"got {status} after {time.monotonic() - began:.1f}s"
    finally:
        await stop(proc)


async def test_two_instances_under_the_default_pseudonym_are_a_chain_not_a_loop(
        origin: object, tmp_path: Path) -> None:
    """(The guard of the loop check above: a forward-mode or reverse `cacheproxy` in front
    of another one, both named `cacheproxy`, still answers, and each adds its member.)"""
    up, seen = await _counting_origin(origin, {"Cache-Control": "max-age=60"})
    inner, inner_port = await start_serve("--upstream", up, cwd=tmp_path)
    outer, outer_port = await start_serve("--upstream", f"http://127.0.0.1:{inner_port}",
                                          cwd=tmp_path)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            for _ in range(2):
                async with s.post(f"http://127.0.0.1:{outer_port}/p", data=b"x") as r:
                    assert r.status == 200
                async with s.get(f"http://127.0.0.1:{outer_port}/g") as r:
                    assert r.status == 200
                    members = r.headers.getall("Cache-Status")
            assert members[0].startswith("cacheproxy; fwd=uri-miss")  # the inner's, stored
            assert members[-1].startswith("cacheproxy; hit")
        assert [r.method for r in seen] == ["POST", "GET", "POST"]
        assert seen[0].headers.getall("Via") == ["1.1 cacheproxy", "1.1 cacheproxy"]
    finally:
        await stop(outer)
        await stop(inner)


# -- Cache-Status: `collapsed` only when the response was reused ---------------------------


async def test_a_waiter_that_had_to_go_upstream_itself_is_not_reported_collapsed(
        origin: object, proxy: object) -> None:
    """Behind another cache, a response often comes already older than its max-age (the
    inner cache's `Age` is counted, RFC 9111 §4.2.3): stored, it is stale on arrival, so
    requests that waited for it (collapsed) cannot be served it and each sends a request
    of its own. Their Cache-Status still said `collapsed`, which RFC 9211 §2.6 defines as
    "the response was successfully reused"; "if not, a new request had to be made", which
    is `collapsed=?0`. Someone reading the header (or comparing it with the inner cache's
    log) is told one upstream request served them all when each made its own. Severity:
    low (a diagnostic field that misstates what happened)."""
    arrived = asyncio.Event()
    release = asyncio.Event()
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        if len(seen) == 1:
            arrived.set()
            await release.wait()
        return web.Response(text="old", headers={"Cache-Control": "max-age=60",
                                                 "Age": "100"})  # an inner cache's Age

    app = web.Application()
    app.router.add_get("/old", answer)
    client = await proxy(await origin(app))  # type: ignore[operator]

    async def get() -> tuple[int, str]:
        async with client.get("/old") as r:  # type: ignore[attr-defined]
            await r.read()
            return r.status, r.headers.getall("Cache-Status")[-1]

    leader = asyncio.create_task(get())
    await asyncio.wait_for(arrived.wait(), 5)
    waiters = [asyncio.create_task(get()) for _ in range(2)]
    await asyncio.sleep(0.5)  # (they are waiting behind the leader)
    release.set()
    answers = [await leader] + [await w for w in waiters]
    assert len(seen) == 3  # the stale-on-arrival answer served no one but its own request
    for status, member in answers[1:]:
        assert status == 200
        assert "fwd-status=200" in member  # each made a request of its own...
        assert "collapsed=?0" in member, member  # ...so it was not reused (§2.6)


# -- trust_forwarded: what the front proxy says of the client's scheme reaches the origin --


async def test_trusted_front_x_forwarded_proto_reaches_the_origin_and_keys_the_answer(
        origin: object, proxy: object) -> None:
    """Behind a TLS-terminating front proxy (nginx with `proxy_set_header
    X-Forwarded-Proto $scheme`, another cacheproxy), with `proxy.trust_forwarded = true`,
    which the README says keeps "the client's own ... X-Forwarded-*", the front's
    `X-Forwarded-Proto: https` never reaches the origin: the proxy drops it and writes its
    own (`http`, the scheme of its hop), or, with `x_forwarded_proto = false`, sends none.
    The application is told the client used http: Django's SECURE_SSL_REDIRECT, Rails'
    force_ssl or Express's `req.secure` redirect to https again and again (a redirect loop),
    or build http:// links into pages served over https (mixed content). Keeping it needs
    the cache key to follow it too: otherwise an answer made for an http client (that very
    redirect, heuristically cacheable as a 301) is stored under the URL and replayed to the
    https clients. Severity: medium (the documented setting for a chain does not do what
    it says, and the symptom, a redirect loop, is a site down)."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        proto = request.headers.get("X-Forwarded-Proto")
        seen.append(proto)
        return web.Response(text=f"built for {proto}", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/page", answer)
    client = await proxy(await origin(app), proxy={"trust_forwarded": True})  # type: ignore[operator]
    async with client.get("/page", headers={"X-Forwarded-Proto": "https"}) as r:  # type: ignore[attr-defined]
        assert await r.text() == "built for https"
    async with client.get("/page", headers={"X-Forwarded-Proto": "http"}) as r:  # type: ignore[attr-defined]
        assert await r.text() == "built for http"  # (not the https client's answer)
    assert seen == ["https", "http"]
