"""Findings of a review of the cache key (review-keys): how two requests that differ in
spelling (percent-encoding, dot segments, empty query, Host case and port, absolute-form,
methods, Vary) share an entry or not, on the quick path (proxy/quick.py) and the full one
(proxy/handler.py), and how PURGE and the admin purge find an entry. Real proxy in front
of an aiohttp origin that echoes what it was asked, both on 127.0.0.1. Each test failed
on the code it was written against (44c1706) and says what is expected, why (RFC section,
or what nginx / Varnish do) and how severe it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import proxy_for_toml, raw_get

from cacheproxy.config import load_config
from cacheproxy.proxy.quick import QuickHits

SEEN = web.AppKey("seen", list)


def echo_app() -> web.Application:
    """An origin whose every answer names the request it was made for (so a wrong hit
    shows: its target and the forwarding fields it got) and may be stored for a minute;
    /ws is a WebSocket echo."""
    seen: list[str] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(msg.data)
            return ws
        seen.append(request.raw_path)
        body = json.dumps({"n": len(seen), "method": request.method, "raw": request.raw_path,
                           "xfh": request.headers.get("X-Forwarded-Host"),
                           "xfp": request.headers.getall("X-Forwarded-Proto", []),
                           "forwarded": request.headers.get("Forwarded")})
        return web.Response(text=body, content_type="application/json",
                            headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app[SEEN] = seen
    app.router.add_route("*", "/{tail:.*}", echo)
    return app



# -- 1. the admin purge of a URL with an empty query purges another URL ------------------


async def test_admin_purge_of_a_url_with_an_empty_query_purges_that_url(origin, proxy):
    """`/q?` and `/q` are two keys (the proxy keeps the raw target, as nginx's
    `$request_uri` and Varnish's `req.url` do; RFC 3986 §6.2.3: a normaliser "should not
    remove delimiters when their associated component is empty"), and the entries list
    shows `http://host/q?`. Purged by that listed URL (`purge?url=http://host/q?`), the
    admin API parsed it with yarl, whose raw_path_qs drops an empty query, so it purged
    `http://host/q` instead, and the entry meant stayed: a wrong entry removed, and the
    one the operator wanted gone still served (the answer says "purged": 1 all the same).
    PURGE /q? (the method) keys it right. Severity: medium (a purge that silently misses,
    and takes a neighbour instead)."""
    c = await proxy(await origin(echo_app()))
    for target in ("/q?", "/q"):
        await raw_get(c, target, host=f"127.0.0.1:{c.server.port}")
    listed = await (await c.get("/_cacheproxy/entries")).json()
    [key] = [e["key"] for e in listed["entries"] if e["key"].endswith("/q?")]
    purged = await c.post("/_cacheproxy/purge", params={"url": key})
    assert (await purged.json())["key"] == key
    host = f"127.0.0.1:{c.server.port}"
    assert (await raw_get(c, "/q?", host=host))[1]["x-cache"] == "MISS"
    assert (await raw_get(c, "/q", host=host))[1]["x-cache"] == "HIT"  # not the one meant


# -- 2. a prefix purge finds nothing in a private cache or a private route ---------------


async def test_prefix_purge_finds_the_entries_of_a_private_cache(origin, proxy):
    """With `cache.shared = false` every key ends in `#private:default` (keyed apart from
    shared routes'). `purge?prefix=/img/` made the prefix `http://host/img/#private:default`,
    the key suffix glued to the prefix, which no key starts with: it answered
    {"purged": 0} and left every entry under /img/. The same prefix purges them in a shared
    cache (tests/test_observe.py), and the README offers it for any cache ("purge by
    prefix"). A purge by prefix is how an operator drops a deploy's old assets (Varnish's
    ban on req.url ~ ^/img/). Severity: medium (a purge that silently does nothing)."""
    c = await proxy(await origin(echo_app()), cache={"shared": False})
    for path in ("/img/1", "/img/2", "/css/1"):
        await c.get(path)
    resp = await c.post("/_cacheproxy/purge", params={"prefix": "/img/"})
    assert (await resp.json())["purged"] == 2
    assert (await c.get("/img/1")).headers["X-Cache"] == "MISS"
    assert (await c.get("/css/1")).headers["X-Cache"] == "HIT"


# -- the quick path and the full path key alike (a property, not a defect) ---------------

ROUTED = """
[proxy]
upstream = "{site}"
x_forwarded_host = %s
host_header = "%s"

[[routes]]
host = "*.example.test"
upstream = "{site}/v2"

[[routes]]
path_prefix = "/private/"
upstream = "{site}"
[routes.cache]
shared = false
"""
HOSTS = ("example.test", "EXAMPLE.test", "example.test:80", "example.test.", "a.example.test",
         "A.Example.Test:80", "a.example.test:8080", "127.0.0.1", "[::1]", "[::1]:80",
         "ex%41mple.test", "example.test:")
SEGMENTS = ("a", "A", "~", "%7E", "%7e", "%2F", "%2f", "%41", ".", "..", "", ";p=1", "private",
            "%70rivate", "v2", "%zz", "a+b", "%20")
QUERIES = (None, "", "a=1&b=2", "b=2&a=1", "x=a+b", "x=a%20b", "a=1&a=2")


@st.composite
def targets(draw: Any) -> str:
    path = "/" + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), max_size=4)))
    query = draw(st.sampled_from(QUERIES))
    return path if query is None else f"{path}?{query}"


@pytest.mark.parametrize("client_host_seen", [True, False])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.sampled_from(HOSTS), target=targets())
async def test_the_quick_path_and_the_full_path_key_a_request_alike(
        origin, proxy, tmp_path: Path, quick_only: Any, client_host_seen: bool,
        host: str, target: str) -> None:
    """proxy/quick.py routes and keys origin-form GETs itself (memoised per (Host, target))
    where handler.py's _respond does it for the rest: for any Host and target spelling
    (case, default port, trailing dot, percent-encodings, dot segments, empty query,
    parameter order; routes by host, by path prefix, a private one; the key naming the
    client's URL, or the upstream's as nginx's $proxy_host), what one path stores under a
    key the other finds: the same answer, the same keys in the store, a HIT either way.
    Checked both ways: filled by the full path then asked on the quick one, and filled by
    the quick path (its Planned forward) then asked on the full one."""
    c = await _routed_proxy(origin, proxy, tmp_path, client_host_seen)
    store = c.app_proxy.store
    results = {}
    for first in (False, True):  # False: the full path fills, True: the quick one
        await store.clear()
        quick_only(first)
        status, _, body = await raw_get(c, target, host=host)
        keys = sorted(await store.keys())
        quick_only(not first)
        status2, fields2, body2 = await raw_get(c, target, host=host)
        assert (status2, body2) == (status, body)
        assert sorted(await store.keys()) == keys  # no second entry under another key
        if keys:
            assert fields2["x-cache"] == "HIT", (first, keys, fields2)
        results[first] = (status, _unnumbered(body), keys)
    assert results[False] == results[True]


def _unnumbered(body: bytes) -> Any:
    """The echo's answer without its count (each fill is a new upstream request)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body  # (the proxy's own 400)
    answer.pop("n")
    return answer


_PROXIES: dict[tuple[int, bool], Any] = {}


async def _routed_proxy(origin: Any, proxy: Any, tmp_path: Path, seen: bool) -> Any:
    """One proxy per test (hypothesis runs many examples under one set of fixtures)."""
    made = _PROXIES.get((id(proxy), seen))
    if made is None:
        _PROXIES.clear()
        toml = ROUTED % (str(seen).lower(), "upstream")
        made = _PROXIES[(id(proxy), seen)] = await proxy_for_toml(
            origin, proxy, tmp_path, toml, site=Echo())
    return made


class Echo:
    def __init__(self) -> None:
        self.app = echo_app()


@pytest.fixture
def quick_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    """quick_only(False) sends every request the full path's way (QuickHits declines)."""
    real = QuickHits.hit
    state = {"on": True}
    monkeypatch.setattr(QuickHits, "hit", lambda self, msg, started:
                        real(self, msg, started) if state["on"] else None)

    def switch(on: bool) -> None:
        state["on"] = on
    return switch


# -- 3. absolute-form: an empty query is dropped on the way upstream ---------------------


async def test_absolute_form_keeps_an_empty_query_upstream_and_in_the_key(origin, proxy):
    """`GET http://host/e? HTTP/1.1` (forward mode: a browser's proxy request) went to the
    origin as `GET /e`, and was stored under, and served for, `http://host/e`: urlsplit
    gives an empty query for both, and request_target wrote the "?" only for a non-empty
    one. RFC 9110 §7.7: "A proxy MUST NOT modify the "absolute-path" and "query" parts of
    the received target URI when forwarding it to the next inbound server" (only an empty
    path becomes "/"); RFC 3986 §6.2.3: "/e?" and "/e" are not equivalent unless the scheme
    says so, which http's does not. The origin-form `GET /e?` goes on as sent, under a
    key of its own (as nginx's $request_uri keeps it). Squid forwards "/e?" too.
    Severity: low (a changed request to the origin; two URLs sharing one entry, which
    origins seldom tell apart)."""
    up = await origin(echo_app())
    c = await proxy(up, forward={"enabled": True})
    url = f"http://127.0.0.1:{up.port}/e"
    _, fields, body = await raw_get(c, url + "?", host=f"127.0.0.1:{up.port}")
    assert json.loads(body)["raw"] == "/e?"
    _, fields, body = await raw_get(c, url, host=f"127.0.0.1:{up.port}")
    assert fields["x-cache"] == "MISS" and json.loads(body)["raw"] == "/e"


# -- 4. routes to one upstream with different credentials share its entries ---------------

CREDENTIALED_ROUTES = """
[proxy]
upstream = "{site}"
x_forwarded_host = false

[[routes]]
host = "alice.example"
upstream = "{alice}"

[[routes]]
host = "bob.example"
upstream = "{bob}"
"""


class WhoAmI:
    """An API that answers for the account its Basic credentials name, for a minute."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/me", self.me)

    @staticmethod
    async def me(request: web.Request) -> web.Response:
        return web.Response(text=f"account of {request.headers.get('Authorization', '-')}",
                            headers={"Cache-Control": "max-age=60"})


async def test_routes_to_one_upstream_with_other_credentials_do_not_share_entries(
        origin, proxy, tmp_path: Path):
    """README: "The cache key is everything the origin sees that selects the response";
    with x_forwarded_host = false (and host_header = upstream) it is the URL fetched
    upstream, nginx's $proxy_host key. A route's upstream may carry `user:password@`,
    "sent as Basic credentials on every request" — the origin sees them, and answers the
    account they name — but the key dropped the userinfo (ForwardPolicy.upstream_host),
    so two routes to one API with two accounts (a tenant per Host) had one key: Bob's
    clients got Alice's account from the cache. The proxy's own credentials are not the
    client's Authorization, so RFC 9111 §3.5 did not stop the store either. Severity: high
    (one account's answers served to another route's users)."""
    api = WhoAmI()
    up = str((await origin(api.app)).make_url("")).rstrip("/")
    path = tmp_path / "cacheproxy.toml"
    path.write_text(CREDENTIALED_ROUTES.format(
        site=up, alice=up.replace("http://", "http://alice:a-secret@"),
        bob=up.replace("http://", "http://bob:b-secret@")))
    c = await proxy(load_config(path, env={}))
    alice = await c.get("/me", headers={"Host": "alice.example"})
    assert await alice.text() == "account of Basic YWxpY2U6YS1zZWNyZXQ="
    bob = await c.get("/me", headers={"Host": "bob.example"})
    assert await bob.text() == "account of Basic Ym9iOmItc2VjcmV0", bob.headers["X-Cache"]
    listed = await (await c.get("/_cacheproxy/entries",
                                headers={"Host": f"127.0.0.1:{c.server.port}"})).json()
    keys = [e["key"] for e in listed["entries"]]
    assert len(keys) == 2 and not any("secret" in key for key in keys)  # no password shown
    for key in keys:  # and each purges as listed
        purged = await c.post("/_cacheproxy/purge", params={"url": key},
                              headers={"Host": f"127.0.0.1:{c.server.port}"})
        assert purged.status == 200, key


# -- 5. an empty port is the default port ---------------------------------------------------


async def test_a_host_with_an_empty_port_shares_the_default_ports_entry(origin, proxy):
    """`Host: example.test:` (a port delimiter with no port) names the same origin as
    `example.test` and `example.test:80`: RFC 3986 §6.2.3, "the port component [...] should
    be normalized" when empty or the default, and RFC 9110 §4.2.3 names ":80" and "" alike
    for http. The key dropped ":80" but kept the bare ":", so the request was a miss under
    a key of its own and X-Forwarded-Host went upstream as "example.test:", a spelling the
    origin may not know (Django's ALLOWED_HOSTS check refuses it). Severity: low (a miss,
    and an odd X-Forwarded-Host, not a wrong answer)."""
    c = await proxy(await origin(echo_app()))
    await raw_get(c, "/p", host="example.test")
    status, fields, body = await raw_get(c, "/p", host="example.test:")
    assert status == 200 and fields["x-cache"] == "HIT"
    status, fields, body = await raw_get(c, "/p2", host="example.test:")
    assert json.loads(body)["xfh"] == "example.test"
