"""Defects found comparing REDbot's notes (redbot.org, the HTTP linter by RFC 9111's editor)
on answers straight from origins with its notes on the same answers through `cacheproxy
serve`: on a miss, on a hit, after a revalidation, and on the conditional (If-None-Match,
If-Modified-Since), Range and gzip-negotiated requests it sends. The origins answered with
max-age, no-cache with an ETag, Last-Modified alone, Vary: Accept-Encoding with gzip,
ranges, must-revalidate, s-maxage, private, no-store, Expires, no Date, chunked bodies, an
upstream Age and Via, repeated fields, HTTP/1.0 and weak ETags, and a layered cache's own
Cache-Status, X-Cache and Referrer-Policy. The tests check the behaviour directly (they do
not need REDbot); each failed before its fix (or is marked xfail, strict, with the reason
it stays)."""

from __future__ import annotations

from aiohttp import web
from browser import chromium


async def _policy_origin(origin: object) -> str:
    """An origin whose 200 sets Referrer-Policy: no-referrer and whose 304 (as many
    servers' do) carries only the §15.4.5 fields."""
    async def page(request: web.Request) -> web.Response:
        etag = '"p1"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag,
                                                     "Cache-Control": request.match_info["cc"]})
        return web.Response(text="<p>inbox</p>", content_type="text/html",
                            headers={"ETag": etag, "Cache-Control": request.match_info["cc"],
                                     "Referrer-Policy": "no-referrer"})

    app = web.Application()
    app.router.add_get("/{cc}", page)
    server = await origin(app)  # type: ignore[operator]
    return server


async def test_a_304_does_not_loosen_the_origins_referrer_policy(origin, proxy) -> None:
    """A 304 the proxy sent (made from its store, or the upstream's passed on) carried
    `Referrer-Policy: strict-origin-when-cross-origin`, the proxy's default for responses
    that set none, while the 200 of the same page carried the origin's `no-referrer`: a 304
    holds only the fields RFC 9110 §15.4.5 lists, so the outbound step found none and added
    its own. A 304 updates the stored response of whoever receives it (RFC 9111 §3.2,
    §4.3.4; Chromium's HttpResponseHeaders::Update replaces Referrer-Policy), so the user's
    browser, after one revalidation (a reload, an expired page), kept the page under the
    looser policy and sent other sites the page's origin, and its own site the page's
    URL, where the origin had asked for no Referer at all. REDbot showed it as the
    proxy's Referrer-Policy on its If-None-Match answer beside the origin's on the 200.
    (Varnish adds no field of its own to a 304; nginx's `add_header` is the operator's
    explicit choice, as `policy_override` is here.) Now a 304 gets the proxy's
    Referrer-Policy only with `policy_override` (the policy the 200 got too).
    Severity: medium (privacy: Referer leak after a revalidation)."""
    server = await _policy_origin(origin)
    client = await proxy(server)
    for cc in ("max-age=60", "private"):  # a 304 from the store; the upstream's passed on
        first = await client.get(f"/{cc}")
        assert first.status == 200
        assert first.headers.getall("Referrer-Policy") == ["no-referrer"]
        again = await client.get(f"/{cc}", headers={"If-None-Match": '"p1"'})
        assert again.status == 304, cc
        assert again.headers.getall("Referrer-Policy", []) in ([], ["no-referrer"]), cc


async def test_a_304_carries_the_overriding_referrer_policy(origin, proxy) -> None:
    """With `policy_override = true` the proxy's Referrer-Policy replaces the origin's on
    every response, a 304 included (a 304 that went without it would leave a browser's
    stored copy with what it had, which is the proxy's too: either way, the policy the
    operator chose). Severity: low (the rule above must not undo override mode)."""
    server = await _policy_origin(origin)
    client = await proxy(server, referer={"policy": "same-origin", "policy_override": True})
    first = await client.get("/max-age=60")
    assert first.headers.getall("Referrer-Policy") == ["same-origin"]
    again = await client.get("/max-age=60", headers={"If-None-Match": '"p1"'})
    assert again.status == 304
    assert again.headers.getall("Referrer-Policy") == ["same-origin"]


async def test_a_browser_keeps_the_origins_no_referrer_after_a_revalidation(origin, proxy
                                                                             ) -> None:
    """What a user saw of the 304 above, in Chromium: a page with a session id in its URL
    (`/inbox?gsid=...`, the seed's example), `Cache-Control: no-cache`, an ETag and
    `Referrer-Policy: no-referrer`. Its first load sent its image request with no Referer;
    loaded again (the browser revalidates, the proxy revalidates too and answers 304 with
    its default policy, which the browser merged into its stored page), the image request
    carried the page's URL (the origin saw `http://.../inbox`: the proxy's `strip_params`
    took the session id out on the way, a third-party image would have had the origin).
    Severity: medium."""
    referers: list[str | None] = []

    async def inbox(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"i1"':
            return web.Response(status=304, headers={"ETag": '"i1"',
                                                     "Cache-Control": "no-cache"})
        return web.Response(text='<img src="/pixel">', content_type="text/html",
                            headers={"ETag": '"i1"', "Cache-Control": "no-cache",
                                     "Referrer-Policy": "no-referrer"})

    async def pixel(request: web.Request) -> web.Response:
        referers.append(request.headers.get("Referer"))
        return web.Response(body=b"GIF89a", content_type="image/gif",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/inbox", inbox)
    app.router.add_get("/pixel", pixel)
    client = await proxy(await origin(app))
    url = str(client.make_url("/inbox?gsid=S3CRET"))
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        for _ in range(2):
            async with page.expect_response(lambda r: r.url.endswith("/pixel")):
                await page.goto(url)
    assert len(referers) == 2
    assert referers == [None, None], referers
