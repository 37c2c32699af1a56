"""Regression tests from a review of the operator surface as an attacker sees it (the admin
API, the dashboard, /metrics, the request log and `cacheproxy logs`). Clients of the proxy
and origins are untrusted; the operator reads the dashboard in a browser and the log in a
terminal. Each test showed a defect."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from browser import chromium
from processes import free_port, start_serve, stop
from test_observe_regressions import read_log

from cacheproxy.observe.record import parse_line
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


READS = """<!doctype html><title>an app's page</title><script>
(async () => {
  const out = {};
  for (const path of ["/_cacheproxy/entries", "/_cacheproxy/entry?url=/cached", "/metrics",
                      "/_cacheproxy/stats"]) {
    try {
      const resp = await fetch(path);
      out[path] = [resp.status, await resp.text()];
    } catch (e) { out[path] = [0, String(e)]; }
  }
  window.__done = out;
})();
</script>"""


async def _read_from_a_proxied_page(origin: Any, proxy: Any) -> dict[str, list[Any]]:
    """What a script of a page the origin serves through the proxy reads of the admin API,
    after another client (203.0.113.7 behind a local proxy) asked for a URL with a secret."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=READS, content_type="text/html")

    app = app_with_a_page()
    app.router.add_get("/reads", page)
    c = await proxy(await origin(app))
    assert (await c.get("/cached?reset=Zq81-secret")).status == 200
    assert (await c.get("/cached")).status == 200
    async with chromium() as browser:
        tab = await browser.new_page()
        await tab.goto(str(c.make_url("/reads")))
        await tab.wait_for_function("window.__done !== undefined", timeout=10_000)
        return await tab.evaluate("window.__done")


async def test_a_page_served_through_the_proxy_cannot_list_the_cache(origin: Any,
                                                                    proxy: Any) -> None:
    """The same origin as above, read side: a script of a proxied page (opened from the
    operator's machine) read `entries` (every stored URL of every host, with its query),
    `entry` (a response's stored fields) and `/metrics`. The dashboard asks for none of
    them (only `stats`); curl and Prometheus send no `Sec-Fetch-Site` and no `Origin`, and
    an address typed into the browser says `none`, so a page's request for them can be
    refused. Severity: low (loopback clients only without a token)."""
    got = await _read_from_a_proxied_page(origin, proxy)
    for path in ("/_cacheproxy/entries", "/_cacheproxy/entry?url=/cached", "/metrics"):
        assert got[path][0] == 403, (path, got[path])
        assert "Zq81-secret" not in got[path][1] and "cacheproxy_" not in got[path][1]


async def test_a_page_served_through_the_proxy_cannot_read_other_clients_requests(
        origin: Any, proxy: Any) -> None:
    """`stats` (which the dashboard polls) holds the last 50 log lines: other clients'
    addresses, URLs with their query strings, Referers and User-Agents. On the single
    listener (the default) a script of any page the origin serves through the proxy, opened
    from the operator's machine, reads them (`Sec-Fetch-Site: same-origin`, as the
    dashboard's own fetch). Squid's cachemgr and nginx's stub_status are not served on the
    origin's pages' origin by default. Severity: low (no token: loopback clients only)."""
    got = await _read_from_a_proxied_page(origin, proxy)
    assert got["/_cacheproxy/stats"][0] == 403, got["/_cacheproxy/stats"][1][:200]


# -- the admin API's answers ----------------------------------------------------------------------

async def test_entries_with_limit_zero_lists_none(origin: Any, proxy: Any) -> None:
    """`entries?limit=0` (or a negative limit) listed one entry with the memory store, where
    the Redis store lists none: MemoryStore.keys appended a key before it compared the count
    with the limit. A limit that is not honoured at its edge; the two stores disagree on the
    same call. Severity: low."""
    c = await proxy(await origin(app_with_a_page()))
    for path in ("/cached", "/cached?2"):
        assert (await c.get(path)).status == 200
    for limit in ("0", "-1"):
        listed = await (await c.get("/_cacheproxy/entries", params={"limit": limit})).json()
        assert listed["entries"] == [], (limit, listed)
    listed = await (await c.get("/_cacheproxy/entries", params={"limit": "1"})).json()
    assert len(listed["entries"]) == 1


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


# -- the request log in a terminal ----------------------------------------------------------------

C1 = [chr(c) for c in range(0x80, 0xA0)]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_c1_control_characters_from_a_client_are_escaped_in_the_log(
        origin: Any, proxy: Any, tmp_path: Any, fmt: str) -> None:
    """A User-Agent or Referer may carry obs-text (RFC 9110 §5.5), which the proxy reads as
    UTF-8: U+009B is CSI (a terminal that honours C1 controls takes `\\u009b2J` as
    ESC [ 2J, clear the screen, and `\\u009d...` as an OSC title) and U+0085 is NEL, a
    line break for Unicode-aware readers. Both formats wrote them raw, where they escape
    C0 controls: the text format's _quote says "control bytes" and escapes only
    U+0000-U+001F and DEL; nginx's default log escaping writes every byte from 0x7F up
    as \\xHH. An operator who watches the log (`tail -f`, `docker compose logs -f`: JSON
    on stdout is the Docker default) gets the client's sequences sent to the terminal.
    Severity: low."""
    log = tmp_path / "requests.log"
    c = await proxy(await origin(app_with_a_page()), log={"path": str(log), "format": fmt})
    agent = "curl/8 \u009b2J\u009b31mred\u009d0;title\u009c"
    referer = "http://a.example/\u0085next-line"
    reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
    writer.write(b"GET /cached HTTP/1.1\r\nHost: a\r\nUser-Agent: " + agent.encode()
                 + b"\r\nReferer: " + referer.encode() + b"\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
    writer.close()
    [line] = await read_log(c, log)
    assert not [ch for ch in line if ch in C1], repr(line)
    record = parse_line(line)
    assert record is not None and (record.user_agent, record.referer) == (agent, referer)


FRAMES = """<!doctype html><title>an app's page</title>
<iframe id="f" src="/_cacheproxy/dashboard"></iframe><script>
(async () => {
  const html = await (await fetch("/_cacheproxy/dashboard")).text();
  const key = (html.match(/name="cacheproxy-page-key" content="([^"]*)"/) || [])[1];
  await new Promise((resolve) => setTimeout(resolve, 1000));
  let framed = null;
  try { framed = document.getElementById("f").contentDocument.title; }
  catch (e) { framed = "denied"; }
  window.__done = {key, framed};
})();
</script>"""


async def test_the_dashboards_key_is_out_of_a_proxied_pages_reach(origin: Any,
                                                                 proxy: Any) -> None:
    """What makes the dashboard's stats calls tell it from other pages of the proxy's
    origin: the page key goes only into a dashboard the user opened (Sec-Fetch-Site
    `none`); a proxied page that fetches the dashboard gets it without the key, and one
    that frames it gets nothing (frame-ancestors 'none'). Opened and reloaded from the
    address bar, the dashboard shows figures; its token form works without reloading."""
    async def frames(request: web.Request) -> web.Response:
        return web.Response(text=FRAMES, content_type="text/html")

    app = app_with_a_page()
    app.router.add_get("/frames", frames)
    c = await proxy(await origin(app))
    assert (await c.get("/cached")).status == 200
    async with chromium() as browser:
        tab = await browser.new_page()
        await tab.goto(str(c.make_url("/frames")))
        await tab.wait_for_function("window.__done !== undefined", timeout=10_000)
        got = await tab.evaluate("window.__done")
        assert got["key"] == "" and got["framed"] != "cacheproxy dashboard", got
        dash = await browser.new_page()
        for _ in range(2):  # opened, then reloaded by the user
            await dash.goto(str(c.make_url("/_cacheproxy/dashboard")))
            await dash.get_by_test_id("requests-total").wait_for(timeout=10_000)
            assert await dash.get_by_test_id("auth-error").is_hidden()
            await dash.reload()


async def test_the_dashboards_token_form_needs_no_reload(origin: Any, proxy: Any) -> None:
    """A token typed into the dashboard's form starts its stats calls again in the page
    (a reload by the page's own script would be a same-origin navigation, answered without
    the page key)."""
    c = await proxy(await origin(app_with_a_page()), admin={"token": "s3cret"})
    async with chromium() as browser:
        dash = await browser.new_page()
        await dash.goto(str(c.make_url("/_cacheproxy/dashboard")))
        await dash.get_by_test_id("auth-error").wait_for(timeout=10_000)
        await dash.fill("[data-testid=token-form] input", "s3cret")
        await dash.click("[data-testid=token-form] button")
        await dash.get_by_test_id("requests-total").wait_for(timeout=10_000)
        assert await dash.get_by_test_id("auth-error").is_hidden()
        assert dash.url.endswith("#token=s3cret")


async def test_every_worker_knows_the_dashboards_key(tmp_path: Any) -> None:
    """With --workers, the dashboard's stats calls reach any worker (the kernel spreads
    connections over them): the key one worker gave the page is every worker's."""
    proc, port = await start_serve("--workers", "2", "--upstream", "http://127.0.0.1:9",
                                   cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}/_cacheproxy/"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "dashboard",
                                   headers={"Sec-Fetch-Site": "none"}) as resp:
                page = await resp.text()
            key = page.split('name="cacheproxy-page-key" content="')[1].split('"')[0]
            assert len(key) >= 24
            page_call = {"Sec-Fetch-Site": "same-origin", "X-Cacheproxy-Page": key}
            statuses = set()
            for _ in range(40):  # a new connection each: both workers answer some
                async with aiohttp.ClientSession() as one, one.get(
                        base + "stats", headers=page_call) as resp:
                    statuses.add(resp.status)
            async with session.get(base + "stats",
                                   headers={"Sec-Fetch-Site": "same-origin"}) as resp:
                assert resp.status == 403
        assert statuses == {200}, statuses
    finally:
        await stop(proc)
