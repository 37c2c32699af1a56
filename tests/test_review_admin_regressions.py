"""Regression tests from a review of the operator surface as an attacker sees it (the admin
API, the dashboard, /metrics, the request log and `cacheproxy logs`). Clients of the proxy
and origins are untrusted; the operator reads the dashboard in a browser and the log in a
terminal. Each test showed a defect."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from browser import chromium

# -- the admin API from a web page ----------------------------------------------------------------

ATTACK = b"""<!doctype html><title>an app's page</title><script>
(async () => {
  const out = [];
  for (const [method, path] of [["POST", "/_cacheproxy/clear"],
                                ["POST", "/_cacheproxy/purge?prefix=/"],
                                ["PURGE", "/cached"]]) {
    try { out.push((await fetch(path, {method})).status); } catch (e) { out.push(String(e)); }
  }
  window.__done = out;
})();
</script>"""


def app_with_a_page() -> web.Application:
    """An origin whose /page is HTML with a script (an app's page, or one of its ads)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=ATTACK, content_type="text/html")

    async def cached(request: web.Request) -> web.Response:
        return web.Response(text="stored", headers={"Cache-Control": "max-age=600"})

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/cached", cached)
    return app


async def test_a_page_served_through_the_proxy_cannot_purge_the_cache(origin: Any,
                                                                     proxy: Any) -> None:
    """On the single listener (the default) every page the origin serves through the proxy
    is same-origin with the admin API, so its scripts' requests carry `Sec-Fetch-Site:
    same-origin` and an `Origin` of the proxy's own host, which the access rule took for the
    dashboard's: any script of the proxied app (a third-party one, an XSS in it) opened from
    the operator's own machine could POST `clear`, `purge` or send PURGE. README, Admin API:
    "Requests a browser marks as cross-site ... are always refused, so no web page can purge
    your cache". The dashboard never purges, so a change asked by a browser (an `Origin`, or
    a `Sec-Fetch-Site` other than `none`) can be refused whatever the site: curl and scripts
    send neither. Varnish takes purges only from its VCL's ACL, Squid's cachemgr is not
    reachable from pages. Severity: medium (the cache of a loopback deployment is wiped by a
    page; the token, when set, is never in a page's reach)."""
    c = await proxy(await origin(app_with_a_page()))
    assert (await c.get("/cached")).status == 200
    assert c.app_proxy.store.stats().entries == 1
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(str(c.make_url("/page")))
        await page.wait_for_function("window.__done !== undefined", timeout=10_000)
        statuses = await page.evaluate("window.__done")
    assert statuses == [403, 403, 403], statuses
    assert c.app_proxy.store.stats().entries == 1
