"""Review of what unsafe requests do to the cache (RFC 9111 §4.4 invalidation, RFC 9110 §9
methods, §9.3.3 stored POST answers, RFC 9111 §4.3.5 HEAD): a real proxy in front of real
origins on 127.0.0.1, unsafe methods (POST, PUT, DELETE, PATCH, unknown and lower-case
ones) answered 2xx/3xx/4xx/5xx or not at all, their Location and Content-Location (same
origin, other hosts, other routes), stored POST answers, HEAD updates, OPTIONS/TRACE/
CONNECT in reverse mode."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from redis_server import RedisServer
from support import proxy_for_toml, raw_get, until


def site(name: str, calls: list[str], unsafe: int | None = None) -> web.Application:
    """An origin whose GETs are fresh for 10 minutes and name `name` and the call count;
    other methods get the status `unsafe` (default: 201 with the Location its `loc` query
    names)."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        calls.append(f"{request.method} {request.raw_path}")
        if request.method in ("GET", "HEAD"):
            return web.Response(text=f"{name} {request.path} {len(calls)}",
                                headers={"Cache-Control": "max-age=600"})
        if unsafe is not None:
            return web.Response(status=unsafe, text="<ms/>")
        return web.Response(status=201, text="made",
                            headers={"Location": request.query.get("loc", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@contextlib.asynccontextmanager
async def refusing_slowly(calls: list[str], closed: asyncio.Event) -> AsyncIterator[int]:
    """An origin (raw bytes) whose GETs are fresh for 10 minutes, and which answers any
    other method 405 only once the proxy closed its connection (closed set then), as a
    slow handler would. Yields its port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.decode("latin-1").split(" ")[:2]
                calls.append(f"{method} {target}")
                if method == "GET":
                    body = f"page {len(calls)}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                while await reader.read(65536):  # its body, then the proxy's close
                    pass
                closed.set()
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_client_leaving_an_unsafe_request_before_its_answer_purges_nothing(
        proxy: Any) -> None:
    """RFC 9111 §4.4 invalidates a URI on a non-error status received for an unsafe
    request. When the client left before the origin answered (the upstream request is
    then given up, 013b750), the proxy invalidated the target URI anyway, "since the
    origin may have acted on it". So any client could purge any stored response without
    the origin's consent: `POST /page` then close, before the origin's 405 comes back.
    Every user's next request was a miss (a full fetch of a large object), and a
    response kept for `stale-if-error` while the origin is down was gone, so users got
    502s instead. An upload reset or timed out upstream (no status either) never
    invalidated; nginx, Varnish and Squid invalidate on no such thing. Now no status, no
    invalidation. Severity: medium (an unauthenticated purge of any URL)."""
    calls: list[str] = []
    closed = asyncio.Event()
    async with refusing_slowly(calls, closed) as port:
        c = await proxy(f"http://127.0.0.1:{port}")
        await _post_and_leave(c, calls, closed)


async def _post_and_leave(c: Any, calls: list[str], closed: asyncio.Event) -> None:
    host = f"127.0.0.1:{c.server.port}"
    first = await raw_get(c, "/page", host=host)
    assert (await raw_get(c, "/page", host=host))[1]["x-cache"] == "HIT"
    _, writer = await asyncio.open_connection(c.server.host, c.server.port)
    writer.write(f"POST /page HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"
                 .encode())
    await writer.drain()
    assert await until(lambda: "POST /page" in calls)
    writer.close()
    await asyncio.wait_for(closed.wait(), 5)  # the proxy gave the POST up
    after = await raw_get(c, "/page", host=host)
    assert (after[1]["x-cache"], after[2]) == ("HIT", first[2])
    assert calls == ["GET /page", "POST /page"]


ROUTED = """
[proxy]
upstream = "{web}"

[[routes]]
path_prefix = "/api/"
upstream = "{api}"

[[routes]]
path_prefix = "/shop/"
upstream = "{web}"
"""


class Site:
    def __init__(self, name: str) -> None:
        self.calls: list[str] = []
        self.app = site(name, self.calls)


async def test_an_upstream_cannot_invalidate_what_another_routes_upstream_serves(
        origin: Any, proxy: Any, tmp_path: Path) -> None:
    """RFC 9111 §4.4 invalidates the URIs in Location and Content-Location "only if the
    host part is the same" as the target's, a defence against denial of service (§7.2).
    Keyed by the client's URL (the default, X-Forwarded-Host on), one host's paths may be
    routed to other upstreams (README "Routes"), and what one origin server said of a URL
    another one serves was taken as the same host's: an API behind `/api/` that echoes a
    client's `?next=` into a 201's Location (a common redirect-after-POST) let anyone purge
    the site's pages, one POST each. Squid keys by the URL and has no such routes; Varnish
    and nginx invalidate nothing on Location. Now a derived URI is invalidated only when
    it is routed to the same upstream origin (two routes to one upstream still invalidate
    each other's URLs). Severity: low (a purge by anyone, through an origin that echoes
    its input; other routes only)."""
    api, web_ = Site("api"), Site("web")
    c = await proxy_for_toml(origin, proxy, tmp_path, ROUTED, api=api, web=web_)
    host = f"127.0.0.1:{c.server.port}"
    for path in ("/index.html", "/api/y", "/shop/z"):
        await raw_get(c, path, host=host)
        assert (await raw_get(c, path, host=host))[1]["x-cache"] == "HIT"

    async def post(target: str) -> None:
        assert (await raw_get(c, target, "Content-Length: 0", method="POST", host=host))[0] == 201

    await post("/api/x?loc=/index.html")  # the API names a page of the web upstream's
    await post("/api/x?loc=http://" + host + "/index.html")
    assert (await raw_get(c, "/index.html", host=host))[1]["x-cache"] == "HIT"
    await post("/api/x?loc=/api/y")  # its own URL: invalidated (§4.4)
    assert (await raw_get(c, "/api/y", host=host))[1]["x-cache"] == "MISS"
    await post("/x?loc=/shop/z")  # another route to the same upstream: its URL too
    assert (await raw_get(c, "/shop/z", host=host))[1]["x-cache"] == "MISS"


async def test_webdavs_safe_methods_do_not_invalidate_what_get_stored(origin: Any, proxy: Any
                                                                      ) -> None:
    """RFC 9111 §4.4 invalidates after unsafe methods, "including methods whose safety is
    unknown". The proxy knew RFC 9110's four safe methods only, so PROPFIND, REPORT and
    SEARCH, which the HTTP Method Registry marks safe (RFC 7237 §3), and QUERY (RFC
    10008), counted as unsafe: every 207 to a WebDAV or CalDAV client's PROPFIND (Finder
    and Nextcloud send one before each file they open) removed the file's stored GET
    response, and the next download went to the origin. Now they invalidate nothing;
    an unknown method (MKCOL is unsafe; "propfind" is not PROPFIND, RFC 9110 §9.1) still
    does. Severity: low (lost hits, never a wrong answer)."""
    calls: list[str] = []
    c = await proxy(await origin(site("dav", calls, 207)))
    host = f"127.0.0.1:{c.server.port}"
    first = await raw_get(c, "/f.txt", host=host)
    for method in ("PROPFIND", "REPORT", "SEARCH", "QUERY"):
        answer = await raw_get(c, "/f.txt", "Depth: 0", "Content-Length: 0", method=method,
                               host=host)
        assert answer[0] == 207
        hit = await raw_get(c, "/f.txt", host=host)
        assert (hit[1]["x-cache"], hit[2]) == ("HIT", first[2]), method
    await raw_get(c, "/f.txt", "Content-Length: 0", method="propfind", host=host)
    assert (await raw_get(c, "/f.txt", host=host))[1]["x-cache"] == "MISS"


def tracing_app() -> web.Application:
    """An origin that answers TRACE as RFC 9110 §9.3.8 says (Apache httpd's default,
    TraceEnable on): the request it received, as message/http."""
    async def handle(request: web.Request) -> web.Response:
        if request.method != "TRACE":
            return web.Response(text=request.headers.get("Authorization", "none"))
        lines = [f"TRACE {request.raw_path} HTTP/1.1",
                 *(f"{k}: {v}" for k, v in request.headers.items())]
        return web.Response(body="\r\n".join(lines).encode(), content_type="message/http")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def test_trace_does_not_carry_the_upstream_urls_credentials_to_be_echoed(
        origin: Any, proxy: Any) -> None:
    """An upstream URL with `user:password@` (proxy.upstream, a route's upstream) has the
    proxy send them as Basic credentials on every request, TRACE too. An origin that
    answers TRACE (Apache httpd does by default) echoes the request it received, so any
    client sending `TRACE /` read `Authorization: Basic <user:password>`, the operator's
    secret, which the log lines mask as `***`. RFC 9110 §9.3.8: "A client MUST NOT
    generate fields in a TRACE request containing sensitive data that might be disclosed
    by the response", stored credentials its first example. Now a TRACE goes without them
    (nor the client's own Authorization, which never reaches a credentialed upstream);
    other methods still carry them. Severity: high (the upstream's password to anyone,
    where the origin answers TRACE)."""
    server = await origin(tracing_app())
    c = await proxy(f"http://alice:s3cret@127.0.0.1:{server.port}")
    host = f"127.0.0.1:{c.server.port}"
    status, _, body = await raw_get(c, "/", "Authorization: Bearer mine", method="TRACE",
                                    host=host)
    assert status == 200 and body.startswith(b"TRACE / HTTP/1.1")
    assert b"authorization" not in body.lower()
    assert b"YWxpY2U6czNjcmV0" not in body and b"s3cret" not in body  # base64, plain
    _, _, got = await raw_get(c, "/page", "Cache-Control: no-store", host=host)
    assert got == b"Basic YWxpY2U6czNjcmV0"  # alice:s3cret, for every other method


@pytest.mark.parametrize("layer", [32 * 1024 * 1024, 0],
                         ids=["memory-layer", "no-memory-layer"])
async def test_a_fill_in_another_replica_does_not_undo_an_invalidation(
        origin: Any, proxy: Any, redis_server: RedisServer, layer: int) -> None:
    """RFC 9111 §4.4: after a successful POST the stored responses of its URL are gone, and
    an answer fetched before it must not come back as fresh (README: an answer being
    fetched when its URL is invalidated is not stored). Each process marks what it
    invalidated, so that its own fills under way do not store their older answers
    (proxy/invalidations.py), but a fill in another replica sharing the Redis store (the
    compose file's two replicas, or --workers with Redis) did not see the mark: replica A
    fetching /doc (a slow page, or one just expired), replica B's POST /doc answered 2xx
    and invalidated it in Redis, then A's fill of the older answer was stored in Redis
    and served by every replica for its whole max-age, as if the write had not
    happened. Every replica now hears the invalidation on the Redis purge channel (which
    already told their memory layers) and marks it as its own. Severity: medium (the
    state from before a write served for max-age after it, in the documented
    deployment)."""
    calls: list[str] = []
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        calls.append(request.method)
        if request.method == "POST":
            return web.Response(status=204)
        text = f"version {calls.count('POST')}"  # as the page is when asked for
        if calls.count("GET") == 1:  # the fill under way while the POST comes
            await release.wait()
        return web.Response(text=text, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await origin(app)
    cache = {"store": "redis", "redis_url": redis_server.url, "redis_timeout": 0.5,
             "redis_retry_interval": 0.2, "memory_layer_bytes": layer}
    a = await proxy(server, cache=cache)
    b = await proxy(server, cache=cache)
    fill = asyncio.ensure_future(raw_get(a, "/doc", host="shop.example"))
    assert await until(lambda: calls == ["GET"])
    posted = await raw_get(b, "/doc", "Content-Length: 0", method="POST", host="shop.example")
    assert posted[0] == 204
    marks = a.app_proxy.exchange.invalidations
    await until(lambda: marks.since("http://shop.example/doc", 0.0))  # heard (or not)
    release.set()
    assert (await fill)[2] == b"version 0"  # its client gets the answer it asked for
    for replica in (b, a):
        status, fields, body = await raw_get(replica, "/doc", host="shop.example")
        assert (status, body) == (200, b"version 1"), fields


async def test_a_post_answer_stored_after_its_own_invalidation_survives_the_echo(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """The guard of the fix above: a replica's own invalidation comes back to it on the
    Redis purge channel, and heard as another's it would refuse the POST answer it
    stores right after it (RFC 9110 §9.3.3, README "What is stored?"). It is not."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        calls.append(request.method)
        if request.method == "POST":
            await asyncio.sleep(0)  # (the body after the head, as often)
            return web.Response(text=f"posted {body.decode()}", headers={
                "Cache-Control": "max-age=600", "Content-Location": "/p"})
        return web.Response(text="got", headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await origin(app)
    cache = {"store": "redis", "redis_url": redis_server.url, "redis_timeout": 0.5,
             "redis_retry_interval": 0.2}
    a = await proxy(server, cache=cache)
    b = await proxy(server, cache=cache)
    for n in range(3):
        reader, writer = await asyncio.open_connection(a.server.host, a.server.port)
        writer.write(b"POST /p HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n"
                     b"Content-Length: 1\r\n\r\n" + str(n).encode())
        answer = await reader.read()
        writer.close()
        assert b"stored" in answer and answer.endswith(f"posted {n}".encode())
        for replica in (a, b):
            _, fields, got = await raw_get(replica, "/p", host="shop.example")
            assert (fields["x-cache"], got) == ("HIT", f"posted {n}".encode())


@pytest.mark.parametrize("location", [
    "http://shop.example/a/../page", "/a/%2e%2e/page", "http://shop.example/x/.%2E/page",
])
async def test_a_location_with_dot_segments_invalidates_the_url_it_resolves_to(
        origin: Any, proxy: Any, location: str) -> None:
    """RFC 9111 §4.4 invalidates the URI in Location; RFC 3986 §5.2.2 resolves a reference
    with dot segments to the URI without them, a reference with a scheme as well, and
    §6.2.2.2 reads "%2E" as "." (browsers resolve "%2e%2e" as ".." too). urljoin resolved
    a relative "/a/../page" to "/page" but left an absolute "http://host/a/../page" as it
    was, and "%2e%2e" in either: the POST invalidated a key no browser requests, and
    /page, which the browser then loaded, was served as before the write. Now the
    reference's path is resolved before it is keyed. Severity: low (a rare spelling; the
    entry is stale until it expires)."""
    calls: list[str] = []
    c = await proxy(await origin(site("shop", calls)))
    first = await raw_get(c, "/page", host="shop.example")
    assert (await raw_get(c, "/page", host="shop.example"))[1]["x-cache"] == "HIT"
    made = await raw_get(c, f"/make?loc={quote(location, safe='')}", "Content-Length: 0",
                         method="POST", host="shop.example")
    assert (made[0], made[1]["location"]) == (201, location)
    after = await raw_get(c, "/page", host="shop.example")
    assert (after[1]["x-cache"], after[2] != first[2]) == ("MISS", True)


async def test_a_head_for_a_url_whose_answer_is_not_stored_goes_as_head(origin: Any,
                                                                         proxy: Any) -> None:
    """A HEAD miss is sent upstream as a GET so that its answer can be stored (README,
    RFC 9110 §9.3.2, nginx's proxy_cache_convert_head). For a URL whose last answer could
    not be stored (hit-for-pass: larger than max_object_bytes, private, Set-Cookie...),
    every HEAD still went as a GET whose body the proxy then abandoned: the origin
    started a whole response per HEAD (a 20 MB file read, a download counted for a link
    checker's or a download manager's `curl -I`), and the upstream connection was closed
    each time. Varnish sends a HEAD in pass as HEAD. Now a HEAD for a hit-for-pass URL
    goes as HEAD (Cache-Status fwd=bypass); once the mark expires (30 s), one goes as GET
    again, and is stored if it now may be. Severity: low (origin load and side effects,
    never a wrong answer)."""
    methods: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        methods.append(request.method)
        return web.Response(body=b"x" * 4096, headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    c = await proxy(await origin(app), cache={"max_object_bytes": 1024})
    host = f"127.0.0.1:{c.server.port}"
    first = await raw_get(c, "/big", method="HEAD", host=host)  # (not known yet: a GET)
    assert "detail=too-big" in first[1]["cache-status"]
    for _ in range(2):
        status, fields, body = await raw_get(c, "/big", method="HEAD", host=host)
        assert (status, fields["content-length"], body) == (200, "4096", b"")
        assert "fwd=bypass" in fields["cache-status"]
    assert methods == ["GET", "HEAD", "HEAD"]
