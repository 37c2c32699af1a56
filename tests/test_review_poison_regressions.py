"""A review of the cache as an attacker sees it: web cache poisoning (Kettle's "Practical
Web Cache Poisoning", "Web Cache Entanglement") and web cache deception, written against
5e47b2b. Each test failed on that code and names the rule it holds the proxy to. Real
origins and clients on 127.0.0.1 only."""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from test_hostile_http_regressions import exchange
from test_proxy_caching import Origin, start


async def test_a_head_with_a_body_does_not_rewrite_the_stored_get_response(
        origin: Any, proxy: Any) -> None:
    """A HEAD carrying content went to the origin as it is (bypass) and its 200 updated
    the stored GET response's fields (RFC 9111 §4.3.5), though the content is no part of
    the cache key: the same "fat GET" Kettle's Web Cache Entanglement poisons with (Rack,
    and frameworks built on it, read parameters from any request's body). A GET with a
    body is never stored for that reason (bypass); a HEAD with one rewrote the headers
    every later GET hit carries (here a `Link` preload naming the attacker's script).
    RFC 9110 §9.3.2: content in a HEAD has no defined semantics. Severity: medium (needs
    an origin that reads a HEAD's body; any client can then set the page's headers)."""
    async def page(req: web.Request) -> web.Response:
        body = await req.text()  # parameters from the body, as Rack's params do
        theme = body.removeprefix("theme=") if body.startswith("theme=") else "/app.js"
        return web.Response(text="page", headers={
            "Cache-Control": "max-age=60", "ETag": '"v1"',
            "Link": f"<{theme}>; rel=preload; as=script"})

    o = Origin(r=page)
    c = await start(origin, proxy, o)
    first = await c.get("/r")
    assert first.headers["Link"] == "</app.js>; rel=preload; as=script"
    attack = await c.request("HEAD", "/r", data=b"theme=//evil.example/x.js",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert attack.status == 200
    victim = await c.get("/r")
    assert victim.headers["X-Cache"] == "HIT"
    assert victim.headers["Link"] == "</app.js>; rel=preload; as=script"


@pytest.mark.parametrize("spelling", ["shop.example:80", "SHOP.example"])
@pytest.mark.parametrize("settings", [{}, {"host_header": "pass", "x_forwarded_host": False}])
async def test_a_host_spelling_the_key_normalises_is_sent_upstream_as_keyed(
        origin: Any, proxy: Any, spelling: str, settings: dict[str, Any]) -> None:
    """The key takes the client's Host lower-cased and without the scheme's default port
    (RFC 9110 §4.2.3: the same URI), but X-Forwarded-Host (and Host, with host_header =
    "pass") went upstream as the client spelled it. An origin that redirects every other
    spelling to its canonical name (a common "canonical host" rule, comparing the name
    exactly) answered the attacker's `Host: shop.example:80` with a 301 to
    http://shop.example/r, which the cache stored under http://shop.example/r: every user
    of the page was then sent round a redirect loop (a cache-poisoned denial of service,
    CPDoS, Nguyen et al. 2019). nginx's `$host`, which X-Forwarded-Host and the cache key
    are usually both made from there, is lower-cased and without the port (checked with
    nginx 1.22: `Host: SHOP.example:80` gives `shop.example`). Severity: medium (any
    client, any URL, for as long as the origin lets the redirect be kept)."""
    def page(req: web.Request) -> web.Response:
        host = req.headers.get("X-Forwarded-Host", req.headers["Host"])
        if host != "shop.example":
            raise web.HTTPMovedPermanently("http://shop.example" + req.path_qs,
                                           headers={"Cache-Control": "max-age=3600"})
        return web.Response(text="page", headers={"Cache-Control": "max-age=60"})

    o = Origin(r=page)
    c = await proxy(await origin(o.app), proxy=settings)
    await c.get("/r", headers={"Host": spelling}, allow_redirects=False)
    victim = await c.get("/r", headers={"Host": "shop.example"}, allow_redirects=False)
    assert victim.status == 200, victim.headers.get("Location")
    assert await victim.text() == "page"


@pytest.mark.parametrize("surrogate", ['content="ESI/1.0"', "no-store-remote"])
async def test_a_surrogate_control_without_caching_directives_keeps_a_private_page_private(
        origin: Any, proxy: Any, surrogate: str) -> None:
    """`Surrogate-Control: content="ESI/1.0"` asks a surrogate to process ESI markup
    (Edge Architecture 1.0 §2.2.4), and `no-store-remote` speaks to remote surrogates
    only (§2.2.2): neither says how long this cache may keep the response. Taken as
    "something for this cache" (cache.targeted_fields, on by default), either one set
    the response's `Cache-Control: private, no-store` aside, and the page was stored
    for a day by heuristic freshness and served to the next user: Alice's account to
    anyone. Symfony's and Drupal's ESI support send that field on exactly such pages.
    Severity: high (a private response shared, with the default config, no attacker
    effort beyond asking for the URL)."""
    def page(req: web.Request) -> web.Response:
        return web.Response(text="account of " + req.headers.get("Cookie", "nobody"), headers={
            "Cache-Control": "private, no-store", "Surrogate-Control": surrogate,
            "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "ETag": '"v1"'})

    o = Origin(account=page)
    c = await start(origin, proxy, o)
    alice = await c.get("/account", headers={"Cookie": "sid=alice"})
    assert await alice.text() == "account of sid=alice"
    other = await c.get("/account")
    assert await other.text() == "account of nobody"
    assert o.calls["account"] == 2


async def test_a_client_cannot_claim_a_surrogate_capability_for_the_page_everyone_gets(
        origin: Any, proxy: Any) -> None:
    """Surrogate-Capability is how surrogates tell the origin what they can do (Edge
    Architecture 1.0 §2.1: each appends its own); the proxy appends `cacheproxy=
    "Surrogate/1.0"`, but passed a client's own field along with it. An origin that
    renders fragments as ESI includes when a surrogate says it processes ESI (Symfony's
    `render_esi`, `Esi::hasSurrogateCapability`) then answered one client's forged
    `Surrogate-Capability: x="ESI/1.0"` with raw `<esi:include>` markup, which this cache
    does not process, stored it, and gave every user a page with its fragment missing
    (Kettle's unkeyed-header poisoning; Symfony's Varnish setup overwrites the field
    for that reason). Dropped like the forwarding fields unless proxy.trust_forwarded.
    Severity: medium (any client, any page built with ESI fragments)."""
    def page(req: web.Request) -> web.Response:
        esi = "ESI/1.0" in ",".join(req.headers.getall("Surrogate-Capability", []))
        body = '<esi:include src="/_fragment/cart"/>' if esi else "<div>cart: 0 items</div>"
        headers = {"Cache-Control": "public, max-age=60"}
        if esi:  # (kept a minute by surrogates, processed by them, as Fastly setups say)
            headers["Surrogate-Control"] = 'content="ESI/1.0", max-age=60'
        return web.Response(text=body, headers=headers)

    o = Origin(r=page)
    c = await start(origin, proxy, o)
    await c.get("/r", headers={"Surrogate-Capability": 'x="ESI/1.0"'})
    victim = await c.get("/r")
    assert await victim.text() == "<div>cart: 0 items</div>"


async def test_an_upstream_grant_naming_an_origin_varies_on_origin_with_cors_off(
        origin: Any, proxy: Any) -> None:
    """With no [cors] of the proxy's (the default), the upstream's own
    Access-Control-Allow-Origin is stored as it came. An origin that echoes an allowed
    Origin without `Vary: Origin` (the commonest CORS setup, and Kettle's classic cached
    reflection) then had the first requester's grant replayed to every other origin's
    page: one visit from https://a.example made the resource unreadable from
    https://b.example for its lifetime (or an attacker's allowed origin, once, for all).
    In `passthrough` mode the proxy already stores such a grant with `Vary: Origin` (Fetch
    §3.2, CORS protocol and HTTP caches); with CORS off it did not. Severity: low-medium
    (any client, any CORS resource whose origin reflects)."""
    allowed = {"https://a.example", "https://b.example"}

    def api(req: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=60"}
        if req.headers.get("Origin") in allowed:
            headers["Access-Control-Allow-Origin"] = req.headers["Origin"]
        return web.Response(text="{}", headers=headers)

    o = Origin(r=api)
    c = await start(origin, proxy, o)
    await c.get("/r", headers={"Origin": "https://a.example"})
    other = await c.get("/r", headers={"Origin": "https://b.example"})
    assert other.headers.get("Access-Control-Allow-Origin") == "https://b.example"


async def test_an_empty_query_goes_upstream_as_keyed(origin: Any, proxy: Any) -> None:
    """`GET /r?` was keyed as http://host/r? (its own entry, as RFC 3986 §6.2.3 asks: an
    empty query is not the same URI as none) but sent upstream as `/r` (yarl drops the
    lone "?"): the cache key and the upstream request disagreed, and the README's "the
    path and query byte for byte" did not hold. An origin that answers `/r?` otherwise
    (a canonical redirect, a framework that reads the raw REQUEST_URI) had its answer
    for `/r` stored under another URI. Severity: low (the key is the finer of the two)."""
    o = Origin(r=lambda req: web.Response(text=req.raw_path,
                                          headers={"Cache-Control": "max-age=60"}))
    c = await start(origin, proxy, o)
    port = c.server.port  # (a raw client: aiohttp's would drop the "?" itself)
    sent = await exchange(port, b"GET /r? HTTP/1.1\r\nHost: shop\r\n\r\n", idle=0.3)
    assert sent.endswith(b"\r\n\r\n/r?"), sent
    plain = await exchange(port, b"GET /r HTTP/1.1\r\nHost: shop\r\n\r\n", idle=0.3)
    assert plain.endswith(b"\r\n\r\n/r"), plain


@pytest.mark.parametrize("target", ["/../admin", "/x/../../admin", "/%2e%2e/admin",
                                    "/.%2E/admin", "/x/..%2F..%2Fadmin", "/..\\admin",
                                    "/..;x/admin"])
async def test_dot_segments_cannot_climb_out_of_the_upstream_path(
        origin: Any, proxy: Any, target: str) -> None:
    """An upstream URL may carry a path (`http://api:8000/v2`); the request's path is
    appended to it. A target whose dot segments climb above the root went up as
    `/v2/../admin`, which the origin resolves to `/admin` (RFC 3986 §5.2.4; %2E and %2F
    are decoded first by most servers): outside the prefix the operator exposed, and
    stored under a key (`/../admin`) naming no such resource. nginx answers such a target
    400 before anything is proxied (checked with nginx 1.22, for each target here but the
    last two: IIS reads "\\" as "/", Tomcat "..;x" as "..", which nginx does not).
    Severity: medium (any client reaches any path of an upstream published under a
    prefix; the cache key and the upstream request name different resources)."""
    seen: list[str] = []

    async def anything(req: web.Request) -> web.Response:
        seen.append(req.raw_path)
        return web.Response(text="ok", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await origin(app)
    c = await proxy(str(server.make_url("/v2")).rstrip("/"))
    answer = await exchange(c.server.port, f"GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n"
                            .encode(), idle=0.3)
    resolved = [posixpath.normpath(unquote(p)) for p in seen]
    assert all(p == "/v2" or p.startswith("/v2/") for p in resolved), (seen, answer)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


@pytest.mark.parametrize("field", ["X-Original-URL", "X-Rewrite-URL"])
async def test_a_rewritten_path_field_cannot_store_another_page_under_the_url(
        origin: Any, proxy: Any, field: str) -> None:
    """Symfony and Zend serve the path in X-Original-URL / X-Rewrite-URL (set by an IIS
    front proxy that rewrote the URL) instead of the request's. Passed from any client,
    `GET /r` with `X-Original-URL: /admin` stored the admin page under /r for everyone
    (Kettle's unkeyed-header poisoning). Dropped like the forwarding fields unless
    proxy.trust_forwarded."""
    def page(req: web.Request) -> web.Response:
        path = req.headers.get(field) or req.path
        return web.Response(text=f"page {path}", headers={"Cache-Control": "max-age=60"})

    o = Origin(r=page)
    c = await start(origin, proxy, o)
    await c.get("/r", headers={field: "/admin"})
    assert await (await c.get("/r")).text() == "page /r"
    trusted = await proxy(await origin(o.app), proxy={"trust_forwarded": True})
    assert await (await trusted.get("/r", headers={field: "/x"})).text() == "page /x"


async def test_a_method_override_cannot_store_its_answer_under_a_get(
        origin: Any, proxy: Any) -> None:
    """Frameworks honour X-HTTP-Method-Override (and X-HTTP-Method, X-Method-Override):
    a GET carrying `DELETE` was answered as a DELETE (here a 404 with max-age, as an
    error page often has) and stored under the URL: every user got the 404 (the "HTTP
    Method Override" cache-poisoned DoS, Nguyen et al., CCS 2019). Not sent with a
    request whose answer may be stored; a POST still carries it."""
    def page(req: web.Request) -> web.Response:
        method = req.headers.get("X-HTTP-Method-Override", req.method)
        if method != req.method:
            return web.Response(status=404, text=f"no {method}",
                                headers={"Cache-Control": "max-age=60"})
        return web.Response(text="page", headers={"Cache-Control": "max-age=60"})

    o = Origin(r=page)
    c = await start(origin, proxy, o)
    await c.get("/r", headers={"X-HTTP-Method-Override": "DELETE"})
    victim = await c.get("/r")
    assert victim.status == 200 and await victim.text() == "page"
    tunnelled = await c.post("/r", headers={"X-HTTP-Method-Override": "PUT"})
    assert tunnelled.status == 404 and await tunnelled.text() == "no PUT"
