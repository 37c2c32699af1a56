"""Findings of a review of how the proxy, as a shared cache (and as a private one), treats
requests and answers that carry one user's data (review-authcookie): `Set-Cookie` in both
`cache.set_cookie` modes and in a private cache, `Authorization` (RFC 9111 §3.5: stored
only under public / s-maxage / must-revalidate, the request's reason never evicting),
qualified `private="..."` and `no-cache="..."`, `Vary: Cookie` and `Vary: Authorization`,
`Cache-Control: private` to a request with a Cookie, a `304` or a `HEAD`'s `200` carrying
`Set-Cookie` (RFC 9111 §3.2), collapsed waiters behind a revalidation that carried one
user's cookie, a stale-while-revalidate refresh sent with one user's credentials,
`Proxy-Authorization` (never forwarded), the request log (cookies and credentials never
written; `strip_params` redacted in the path and Referer) and the admin listing.

Found right (and, where no test held it yet, pinned below): answers with Set-Cookie are
not stored by default and are stored without the cookie in `strip` mode, collapsed
waiters included; a 304's Set-Cookie reaches only the client whose request it answered;
private and Authorization answers are never stored nor served to another user, nor do
they evict what is stored; Vary: Cookie keeps users apart. Each fix's test failed on the
code it was written against (3d3e977). Origins and the proxy run on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from processes import clean_env, free_port, start_serve, stop
from support import cache_status, until

from cacheproxy.config import Config
from cacheproxy.config.private_exposure import private_cache_exposure
from cacheproxy.config.sections import CacheConfig, ProxyConfig, RouteConfig


def _app(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/r", handler)
    return app


async def test_a_private_cache_never_replays_a_stored_set_cookie(origin: Any, proxy: Any
                                                                 ) -> None:
    """With `cache.shared = false` (a private, single-user cache: a developer's browser
    pointed at it) an answer with `Set-Cookie` was stored with its cookie, and every hit
    set that cookie again: a page cached while anonymous (Django's csrftoken, a session
    cookie) put the old value back in the browser after the user logged in and got a new
    one, so the next form post failed its CSRF check or the user was logged out. Browsers'
    own caches store such answers without their cookies (Chromium persists cached headers
    with PERSIST_SANS_COOKIES), and RFC 9111 §3.1 lets a cache leave out fields whose
    semantics forbid replaying them; README's `cache.set_cookie` says no mode replays a
    cookie. Now a private cache stores the answer without `Set-Cookie`, as browsers do;
    the client whose request fetched it still gets it. Severity: medium (private mode)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="form", headers={
            "Cache-Control": "max-age=60", "Set-Cookie": "csrftoken=anonymous; Path=/"})
    c = await proxy(await origin(_app(page)), cache={"shared": False})
    first = await c.get("/r")
    assert first.headers["Set-Cookie"] == "csrftoken=anonymous; Path=/"
    for again in (await c.get("/r"), await c.head("/r")):
        assert again.headers["X-Cache"] == "HIT"
        assert "Set-Cookie" not in again.headers


async def test_the_admin_listing_shows_no_credentials_a_variant_is_kept_for(
        origin: Any, proxy: Any) -> None:
    """An answer that varies on `Cookie` or `Authorization` (RFC 9111 §4.1) is stored per
    value of those fields, and `entries` and `entry?url=` listed each variant's request
    values as they were: every stored user's session cookie and bearer token or Basic
    password, in clear, in an admin answer that operators paste into tickets and that the
    Redis store's listing gives for every replica's users. RFC 9111 §7.3 and RFC 9110
    §17.13 (credentials): a cache must not disclose what it holds for one user. Now the
    values of `Cookie`, `Authorization` and `Proxy-Authorization` are listed as `***`
    (the style of the upstream's credentials in log lines); the other Vary values stay.
    Severity: medium (credential disclosure to whoever reads the admin API)."""
    async def api(request: web.Request) -> web.Response:
        return web.Response(text="yours", headers={
            "Cache-Control": "public, max-age=60",
            "Vary": "Cookie, Authorization, Accept-Language"})
    c = await proxy(await origin(_app(api)))
    await c.get("/r", headers={"Cookie": "sid=SECRET-SESSION",
                               "Authorization": "Basic YWxpY2U6U0VDUkVU",
                               "Accept-Language": "de"})
    listed = await (await c.get("/_cacheproxy/entries")).json()
    one = await (await c.get("/_cacheproxy/entry?url=/r")).json()
    for variant in (listed["entries"][0]["variants"][0], one["variants"][0]):
        assert variant["vary"] == {"cookie": "***", "authorization": "***",
                                   "accept-language": "de"}


async def test_a_credentialed_head_does_not_evict_the_shared_response(origin: Any,
                                                                      proxy: Any) -> None:
    """A `HEAD` the cache sends on as `HEAD` (here `If-Match` with the stored response
    stale) from a logged-in user got an answer made for that user: the origin set a
    cookie (or said `private`). The answer's own reason evicted the stored shared GET
    response, although the request carried a Cookie, and a GET from the same user with
    the same answer evicts nothing (RFC 9111 §3.5, §4.3.5: what is made for one user says
    nothing of the shared one): any logged-in client's HEAD emptied the cache for the URL.
    Now such a HEAD, like a GET, leaves the stored response alone. Severity: low (origin
    load, hit ratio)."""
    async def page(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=1", "ETag": '"v"', "Age": "5"}
        if request.method == "HEAD" and "Cookie" in request.headers:
            return web.Response(headers={**headers, "Set-Cookie": "sid=renewed",
                                         "Content-Length": "4"})
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Cache-Control": "private, max-age=1",
                                         "Content-Length": "4"})
        return web.Response(text="page", headers=headers)
    c = await proxy(await origin(_app(page)))
    await c.get("/r")
    assert c.app_proxy.store.stats().entries == 1
    for credentials in ({"Cookie": "sid=alice"}, {"Authorization": "Bearer alice"}):
        head = await c.head("/r", headers={**credentials, "If-Match": '"v"'})
        assert head.status == 200 and "fwd=bypass" in cache_status(head)
        assert c.app_proxy.store.stats().entries == 1


async def test_private_set_cookie_stores_the_rest_of_the_answer_without_the_cookie(
        origin: Any, proxy: Any) -> None:
    """`Cache-Control: max-age=60, private="Set-Cookie"` is an origin saying that the
    cookie is one client's and the rest of the answer anyone's (RFC 9111 §5.2.2.7: a
    shared cache "MUST NOT store the specified field names", the rest it may store). With
    the default `cache.set_cookie = "bypass"` the proxy stored nothing of it, so every
    request for such a page went to the origin (`detail=set-cookie`), although the
    project already stores qualified private answers without the fields they name. Now
    it is stored without `Set-Cookie`: the client that fetched it gets its cookie, the
    next clients a hit without one. Severity: low (origin load, never a leak)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="page", headers={
            "Cache-Control": 'max-age=60, private="Set-Cookie"', "Set-Cookie": "sid=alice"})
    c = await proxy(await origin(_app(page)))
    first = await c.get("/r")
    assert first.headers["Set-Cookie"] == "sid=alice" and "stored" in cache_status(first)
    second = await c.get("/r")
    assert second.headers["X-Cache"] == "HIT" and "Set-Cookie" not in second.headers


def _config(listen: str, store: str = "memory", shared: bool = False,
            route_shared: bool | None = None) -> Config:
    routes = () if route_shared is None else (RouteConfig(
        upstream="http://127.0.0.1:9", cache=CacheConfig(shared=route_shared)),)
    return dataclasses.replace(Config(), proxy=ProxyConfig(listen=listen),
                               cache=CacheConfig(shared=shared, store=store), routes=routes)


@pytest.mark.parametrize("config, named", [
    (_config("0.0.0.0:8080"), ["cache.shared", "proxy.listen (0.0.0.0:8080)"]),
    (_config("127.0.0.1:8080", store="redis"), ["cache.shared", 'cache.store = "redis"']),
    (_config("[::]:8080", shared=True, route_shared=False),
     ["routes[0].cache.shared", "proxy.listen ([::]:8080)"]),
    (_config("127.0.0.1:8080"), None),
    (_config("localhost:8080", shared=True, route_shared=False), None),
    (_config("0.0.0.0:8080", store="redis", shared=True), None),
])
def test_a_private_cache_within_reach_of_other_users_is_warned_of(
        config: Config, named: list[str] | None) -> None:
    """`cache.shared = false` (or a route's) is a private, single-user cache: it stores
    answers marked `private` and answers to `Authorization` and serves them to whoever
    asks next (RFC 9111 §3, §3.5, §5.2.2.7 allow that of a cache one user owns). Set on
    a listener other machines reach, or with the Redis store every replica reads, it
    served one user's account page to the next user who asked for the URL, and nothing
    said so: the README's one line ("acts as a private (single-user) cache") was all.
    Now the start says it in a WARNING naming the keys (as forward.open guards an open
    proxy, but a warning: only the operator knows that one person connects). Severity:
    medium (a configuration that leaks per-user pages, said nowhere at run time)."""
    said = private_cache_exposure(config)
    if named is None:
        assert said is None
    else:
        assert said is not None and all(part in said for part in named), said


async def test_serve_warns_at_start_of_a_private_cache_on_the_redis_store(
        tmp_path: Path) -> None:
    """The warning above, as `cacheproxy serve` says it once at start (a Redis nobody
    listens on: the proxy serves uncached meanwhile; the warning is about the config)."""
    env = clean_env(CACHEPROXY_CACHE_SHARED="false", CACHEPROXY_CACHE_STORE="redis",
                    CACHEPROXY_CACHE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    proc, _ = await start_serve("--upstream", "http://127.0.0.1:9", cwd=tmp_path, env=env)
    code, err = await stop(proc)
    assert code == 0
    warned = [line for line in err.splitlines()
              if " WARNING " in line and "cache.shared = false (a private cache" in line]
    assert len(warned) == 1 and 'cache.store = "redis"' in warned[0], err


async def test_collapsed_waiters_behind_a_304_get_no_cookie_of_the_leaders(
        origin: Any, proxy: Any) -> None:
    """Pin (found right): requests that wait behind a revalidation whose 304 set the
    leader's cookie (`cache.set_cookie = "strip"`) are answered from the stored response,
    without that cookie; the leader alone gets it (RFC 9111 §3.2 merges the 304, §3.1 and
    the strip policy keep the cookie out of storage). Squid and nginx never share one
    client's Set-Cookie with another either."""
    gate = asyncio.Event()
    conditional: list[str] = []

    async def page(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v"':
            conditional.append(request.headers.get("Cookie", ""))
            await gate.wait()
            return web.Response(status=304, headers={"ETag": '"v"',
                                                     "Set-Cookie": "sid=alice-renewed"})
        return web.Response(text="page", headers={
            "Cache-Control": "max-age=1", "ETag": '"v"', "Age": "5"})
    c = await proxy(await origin(_app(page)), cache={"set_cookie": "strip"})
    await c.get("/r")
    leader = asyncio.ensure_future(c.get("/r", headers={"Cookie": "sid=alice"}))
    assert await until(lambda: len(conditional) == 1)
    waiters = [asyncio.ensure_future(c.get("/r")) for _ in range(2)]
    assert not await until(lambda: len(conditional) > 1, timeout=0.2)
    gate.set()
    assert (await leader).headers["Set-Cookie"] == "sid=alice-renewed"
    for waiter in await asyncio.gather(*waiters):
        assert "collapsed" in cache_status(waiter) and "Set-Cookie" not in waiter.headers
    assert conditional == ["sid=alice"]


async def test_a_refresh_sent_with_one_users_credentials_stores_nothing_of_theirs(
        origin: Any, proxy: Any) -> None:
    """Pin (found right): a stale-while-revalidate refresh goes upstream with the request
    that caused it, `Authorization` included (as nginx's proxy_cache_background_update
    does); the answer made for that user, without public / s-maxage / must-revalidate, is
    not stored (RFC 9111 §3.5) and does not evict the shared one, so the next anonymous
    client still gets the shared page."""
    sent: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        who = request.headers.get("Authorization")
        sent.append(who)
        return web.Response(text=f"for {who}" if who else "public", headers={
            "Cache-Control": "max-age=1, stale-while-revalidate=60", "Age": "5"})
    c = await proxy(await origin(_app(page)))
    await c.get("/r")
    alice = await c.get("/r", headers={"Authorization": "Bearer alice"})
    assert "detail=stale-while-revalidate" in cache_status(alice)
    assert await until(lambda: len(sent) == 2) and sent[1] == "Bearer alice"
    assert await until(lambda: not c.app_proxy.driver._background)
    bob = await c.get("/r")
    assert await bob.text() == "public"


async def test_a_heads_set_cookie_is_not_merged_into_the_stored_response(
        origin: Any, proxy: Any) -> None:
    """Pin (found right): a `200` to a `HEAD` updates the stored GET response's fields as a
    304 would (RFC 9111 §4.3.5, §3.2), but with `cache.set_cookie = "strip"` its
    `Set-Cookie` reaches the client that sent the HEAD only: the freshened entry takes the
    HEAD's other fields and no cookie."""
    async def page(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            return web.Response(headers={
                "Cache-Control": "max-age=60", "ETag": '"v"', "Set-Cookie": "sid=head",
                "X-Build": "2", "Content-Length": "4"})
        return web.Response(text="page", headers={
            "Cache-Control": "max-age=1", "ETag": '"v"', "Age": "5", "X-Build": "1"})
    c = await proxy(await origin(_app(page)), cache={"set_cookie": "strip"})
    await c.get("/r")
    head = await c.head("/r", headers={"If-Match": '"v"'})  # stale: sent on as HEAD
    assert head.headers["Set-Cookie"] == "sid=head" and "fwd=bypass" in cache_status(head)
    hit = await c.get("/r")
    assert hit.headers["X-Cache"] == "HIT" and hit.headers["X-Build"] == "2"
    assert "Set-Cookie" not in hit.headers
