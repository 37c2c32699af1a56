"""Regression tests from a review of the operator surface as an attacker sees it (the admin
API, the dashboard, /metrics, the request log and `cacheproxy logs`). Clients of the proxy
and origins are untrusted; the operator reads the dashboard in a browser and the log in a
terminal. Each test showed a defect."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from browser import chromium
from processes import free_port

from cacheproxy.proxy.server import STARTED_WITH, _start_control

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


# -- admin.listen ---------------------------------------------------------------------------------

async def test_requests_to_admin_listen_are_never_counted_as_the_proxys_traffic(
        origin: Any, proxy: Any) -> None:
    """With admin.listen set, a path of no endpoint there (a scanner's GET /, /x) got
    aiohttp's 404 and was counted as the proxy's traffic: `cache=ERROR route=default` in
    the log, in the stats API's requests and by_cache, and in /metrics'
    cacheproxy_requests_total{cache="ERROR"} and cacheproxy_errors_total, lowering the hit
    ratio. Anyone who can open a connection to the admin address (no token needed for a
    404) moves the operator's error alerts; the admin calls themselves are not traffic
    (README, The request log). Severity: low."""
    port = free_port()
    c = await proxy(await origin(app_with_a_page()), admin={"listen": f"127.0.0.1:{port}"})
    runner = await _start_control(c.server.app, c.server.app[STARTED_WITH], False)
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/", "/wp-login.php", "/x", "/_cacheproxy/nothing"):
                async with s.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 404
            async with s.get(f"http://127.0.0.1:{port}/_cacheproxy/stats") as resp:
                stats = await resp.json()
            async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
    finally:
        await runner.cleanup()
    assert stats["requests"] == 0 and stats["by_cache"]["ERROR"] == 0, stats["by_cache"]
    assert "cacheproxy_errors_total 0.0" in metrics
