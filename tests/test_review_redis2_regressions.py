"""A review of the Redis store against this week's key changes (review-redis2): the user of
an upstream URL's credentials in the key, a trusted front's scheme keying https answers
(`https://…` or `…#https`), empty queries, empty ports and IPv6 literals, and purges that
cover both schemes. Real redis-server, real proxies (two replicas sharing Redis, each with
its memory layer) in front of an aiohttp origin, all on 127.0.0.1. Each test failed on the
code it was written against (6a3a135) and says what is expected, why, and how severe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis_server import RedisServer
from support import raw_get
from test_store_redis import make_entry
from yarl import URL

from cacheproxy.config import load_config
from cacheproxy.http.invalidation import as_derived_from, invalidated_uris
from cacheproxy.store.serial import encode

HTTPS = "X-Forwarded-Proto: https"


def _counting_origin() -> web.Application:
    """Every answer says how many requests the origin has answered (a stale copy shows
    an older number) and the scheme it was told; GETs may be stored for a minute, a POST
    answers 200 (RFC 9111 §4.4: it invalidates), a POST to /page with Location: /other."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.raw_path}")
        body = json.dumps({"n": len(seen), "xfp": request.headers.get("X-Forwarded-Proto")})
        headers = {"Cache-Control": "max-age=60"}
        if request.method == "POST" and request.path == "/page":
            headers["Location"] = "/other"
        return web.Response(text=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _redis(server: RedisServer, **changes: Any) -> dict[str, Any]:
    return {"store": "redis", "redis_url": server.url, "redis_timeout": 0.5,
            "redis_retry_interval": 0.2, "memory_layer_ttl": 30.0, **changes}


async def _get(client: Any, target: str, *fields: str, method: str = "GET",
               host: str = "shop.example") -> tuple[int, str | None, int]:
    """(status, X-Cache, the origin's count) of one request with exactly this target, for
    one Host whichever replica it reaches."""
    status, head, body = await raw_get(client, target, *fields, method=method, host=host)
    return status, head.get("x-cache"), json.loads(body)["n"]


async def _redis_keys(server: RedisServer) -> list[str]:
    r = Redis.from_url(server.url)
    try:
        return sorted(k.decode("utf-8", "surrogateescape") for k in await r.keys("*"))
    finally:
        await r.aclose()


# -- 1. an unsafe method's invalidation leaves the other scheme's entry ---------------------


@pytest.mark.parametrize("keyed_by", ["upstream-url", "client-host"])
@pytest.mark.parametrize("posted_as", ["http", "https"])
async def test_an_unsafe_request_invalidates_both_schemes_entries_of_its_url(
        origin: Any, proxy: Any, redis_server: RedisServer, keyed_by: str,
        posted_as: str) -> None:
    """Behind a trusted TLS front (proxy.trust_forwarded) one URL has two entries, the
    http clients' and the https clients' (`…#https`, or `https://host/…` when the client's
    Host is keyed). The admin purge of a path and the PURGE method remove both (57dae1d,
    ea9e3c6: "Varnish's PURGE hash has no scheme"), but a POST's invalidation (RFC 9111
    §4.4) and its Location's removed only the entry of the scheme the POST came in by: after
    an https client's form POST, http clients (and the reverse) were served the state from
    before the change from Redis, and from every replica's memory layer, for the entry's
    whole lifetime. Where the key names the upstream URL the origin saw one and the same
    URL for both entries; the origin's change is to the resource, whatever scheme the
    front terminated. Squid invalidates on an unsafe method whatever the scheme of its
    listener; the cache cannot tell which scheme's copy the change made stale, so it
    must drop both, as its purges do. Severity: medium (stale content after a write, for
    as long as max-age, on a shared cache)."""
    origin_app = await origin(_counting_origin())
    proxy_fields = {"trust_forwarded": True, "x_forwarded_host": keyed_by == "client-host"}
    a = await proxy(origin_app, proxy=proxy_fields, cache=_redis(redis_server))
    b = await proxy(origin_app, proxy=proxy_fields, cache=_redis(redis_server))
    for path in ("/page", "/other"):
        for fields in ((), (HTTPS,)):
            assert (await _get(a, path, *fields))[1] == "MISS"
    before = {}
    for path in ("/page", "/other"):
        for fields in ((), (HTTPS,)):  # b's memory layer holds them now (for 30 s)
            status, x_cache, before[path, fields] = await _get(b, path, *fields)
            assert x_cache == "HIT"
    post = (HTTPS,) if posted_as == "https" else ()
    status, _, _ = await _get(a, "/page", "Content-Length: 0", *post, method="POST")
    assert status == 200
    for path in ("/page", "/other"):
        for fields in ((), (HTTPS,)):
            for replica in (a, b):
                got = await _get(replica, path, *fields)
                assert got[2] != before[path, fields], (path, fields, got,
                                                        await _redis_keys(redis_server))


def test_the_other_schemes_keys_of_an_invalidation_keep_each_keys_own_suffix() -> None:
    """The keys a POST's answer invalidates (its target, Location, Content-Location: RFC
    9111 §4.4), as the other scheme keys them: an upstream URL's key with a user and a
    private route's suffix, and a client's URL with a non-default port."""
    key = "http://alice@api:8080/f?#private:r"
    keys = invalidated_uris("POST", 201, key, "/items/7?", "/f?")
    assert keys == ["http://alice@api:8080/f?#private:r",
                    "http://alice@api:8080/items/7?#private:r"]
    twin = "http://alice@api:8080/f?#https#private:r"
    assert as_derived_from(keys, key, twin) == [
        "http://alice@api:8080/f?#https#private:r",
        "http://alice@api:8080/items/7?#https#private:r"]
    assert as_derived_from(as_derived_from(keys, key, twin), twin, key) == keys
    assert as_derived_from(["https://[::1]:8443/a", "https://[::1]:8443/b"],
                           "https://[::1]:8443/a", "http://[::1]:8443/a") == [
        "http://[::1]:8443/a", "http://[::1]:8443/b"]


# -- 2. an entry Redis kept from before the user was keyed ---------------------------------


async def test_an_entry_stored_before_the_user_was_keyed_is_not_served_to_another_route(
        origin: Any, proxy: Any, redis_server: RedisServer, tmp_path: Path) -> None:
    """a22bc7f put the user of a route's upstream credentials in keys named after the
    upstream URL (`http://alice@api/me`), because two routes to one API as two accounts
    had shared `http://api/me`. Redis outlives the proxies: what the version before stored
    for Alice's route is still under `http://api/me` after the upgrade (and old replicas
    go on writing it there during a rolling one), and that is exactly the key of a route
    to the same upstream with no credentials (the default route of the keys review's
    config). Its clients are served Alice's account until the entry expires. A record
    written before the key change cannot be told from one written after (same layout,
    same VERSION, its key field matches), so entries now live under a keys generation
    (`cacheproxy:e2:`, store/redis.py KEYS_GENERATION) that this build alone reads.
    nginx's and Varnish's caches are per process and start empty on an upgrade; a shared
    cache whose key spelling changes needs its old entries out of reach. Severity: low (a
    window of max-age after an upgrade, and only with an anonymous route to an API another
    route reaches with credentials; but then one account's answers go to anonymous
    clients)."""
    async def me(request: web.Request) -> web.Response:
        return web.Response(text=f"account of {request.headers.get('Authorization', '-')}",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/me", me)
    up = str((await origin(app)).make_url("")).rstrip("/")
    path = tmp_path / "cacheproxy.toml"
    path.write_text(f"""
[proxy]
upstream = "{up}"
x_forwarded_host = false
[cache]
store = "redis"
redis_url = "{redis_server.url}"
[[routes]]
host = "alice.example"
upstream = "{up.replace("http://", "http://alice:a-secret@")}"
""")
    # What the proxy before a22bc7f stored for Alice's route: her answer, keyed without
    # her user, under the namespace of that build (the record layout and VERSION are the
    # same since).
    old_key = f"{up}/me"
    alices = make_entry(old_key, b"account of Basic YWxpY2U6YS1zZWNyZXQ=")
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.hset(f"cacheproxy:e:{old_key}", "[[],[]]", encode(alices))
        await raw.expire(f"cacheproxy:e:{old_key}", 60)
    finally:
        await raw.aclose()
    c = await proxy(load_config(path, env={}))
    alice = await c.get("/me", headers={"Host": "alice.example"})
    assert await alice.text() == "account of Basic YWxpY2U6YS1zZWNyZXQ="
    anonymous = await c.get("/me", headers={"Host": "site.example"})
    assert await anonymous.text() == "account of -", anonymous.headers["X-Cache"]


# -- 3. the admin API decodes a percent-encoded URL into one no request can have -----------


async def test_the_admin_api_finds_a_percent_encoded_url_as_the_entries_list_shows_it(
        origin: Any, proxy: Any, redis_server: RedisServer) -> None:
    """Keys keep a target byte for byte (`/caf%C3%A9`, `/c++`), and the entries list shows
    them so. Given to entry?url=, purge?url= or purge?prefix= as shown (README: "URLs may
    be given in full or as a path"), the query's decoding made them `/café` and `/c  `:
    keys no request can have (a target holds no raw non-ASCII or space, RFC 9112 §3.2,
    RFC 3986 §2.1), so entry and purge answered 404 and a prefix purge `{"purged": 0}`
    with 200, while the entry stayed in Redis and in every replica's memory layer. nginx's
    proxy_cache_purge and Varnish's PURGE take the URL as the request spelt it, as this
    proxy's PURGE method does. A value whose decoded form can name no key is taken as
    typed; one that decodes to a possible key (`%2F`) is decoded, as any query value.
    Severity: low (the operator's purge silently does nothing for such URLs)."""
    c = await proxy(await origin(_counting_origin()), cache=_redis(redis_server))
    host = f"127.0.0.1:{c.server.port}"
    admin = f"http://{host}/_cacheproxy/"
    for target in ("/caf%C3%A9", "/c++", "/a%20b"):
        status, x_cache, _ = await _get(c, target, host=host)
        assert (status, x_cache) == (200, "MISS")

    async def call(method: str, query: str) -> tuple[int, Any]:
        url = URL(admin + query, encoded=True)  # as curl sends what was typed
        async with c.session.request(method, url) as resp:
            return resp.status, await resp.json()

    status, listed = await call("GET", "entries?prefix=/caf%C3%A9")
    assert [e["key"] for e in listed["entries"]] == [f"http://{host}/caf%C3%A9"]
    assert (await call("GET", "entry?url=/caf%C3%A9"))[0] == 200
    assert (await call("GET", f"entry?url=http://{host}/c++"))[0] == 200
    assert (await call("POST", "purge?url=/c++"))[0] == 200
    assert (await call("POST", "purge?prefix=/caf%C3%A9"))[1]["purged"] == 1
    assert (await call("POST", "purge?url=/a%2520b"))[0] == 200  # (encoded: still decoded)
    assert await _redis_keys(redis_server) == []
